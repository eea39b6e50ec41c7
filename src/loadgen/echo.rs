//! The ceiling the gateway is measured against: a bare tonic server with the same TLS set-up
//! as the gateway (its server certificate and key, client certificates required and verified
//! against the same CA), answering one unary RPC, `grpc.health.v1.Health/Check`, and nothing
//! else — no principals, no rate limit, no database.

use std::net::SocketAddr;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Serves the echo on `listen` until the process ends; `on_bound` gets the bound address.
pub async fn serve(
    listen: SocketAddr,
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), Box<dyn std::error::Error>> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pem));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    on_bound(listener.local_addr()?);
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder()
        .tls_config(tls)?
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

//! Fetching a CRL over plain HTTP (CRLs are signed: their integrity does not rest on TLS), with
//! a timeout per attempt, retries and a size cap.

use std::time::Duration;

use super::{CrlError, CrlSettings};

/// The largest CRL body fetched over HTTP (large national CAs publish lists of some MiB).
const MAX_CRL_BYTES: usize = 64 * 1024 * 1024;

/// An `http://host[:port]/path` URL (CRLs are signed: their integrity does not rest on TLS).
#[derive(Debug)]
pub(super) struct HttpUrl {
    pub(super) authority: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path_and_query: String,
}

impl HttpUrl {
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// URLs are supported (CRLs are signed)".into());
        }
        let authority = uri.authority().ok_or("no host")?;
        Ok(Self {
            authority: authority.as_str().to_owned(),
            host: authority.host().to_owned(),
            port: authority.port_u16().unwrap_or(80),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// GET `url` with the configured timeout per attempt and retries with doubling pauses.
pub(super) async fn fetch(url: &str, settings: &CrlSettings) -> Result<Vec<u8>, CrlError> {
    let failed = |message: String| CrlError::Fetch {
        url: url.to_owned(),
        message,
    };
    let target = HttpUrl::parse(url).map_err(failed)?;
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        let result = tokio::time::timeout(settings.fetch_timeout, get(&target))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", settings.fetch_timeout)));
        match result {
            Ok(body) => return Ok(body),
            Err(message) if attempt >= settings.fetch_attempts => return Err(failed(message)),
            Err(message) => {
                tracing::debug!(url, attempt, error = %message, "CRL fetch failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
                attempt += 1;
            }
        }
    }
}

async fn get(target: &HttpUrl) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::get(target.path_and_query.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::USER_AGENT, "etjanstekort-gateway")
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_CRL_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}

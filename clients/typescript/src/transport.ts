// The mTLS transport: gRPC over HTTP/2 with a client certificate.
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

/** Where the gateway is and which certificate the caller presents. */
export interface MtlsTransportOptions {
  /** e.g. `https://gateway.example.se:443` or `https://127.0.0.1:50051`. */
  baseUrl: string;
  /** PEM of the CA that issued the gateway's server certificate. */
  caPem: string | Buffer;
  /** PEM of the caller's client certificate (the SITHS function certificate). */
  certPem: string | Buffer;
  /** PEM of the client certificate's private key. */
  keyPem: string | Buffer;
  /** TLS server name when it differs from the host in `baseUrl`. */
  servername?: string;
  /** Extra interceptors, e.g. for deadlines or tracing headers. */
  interceptors?: Interceptor[];
}

/**
 * A gRPC transport for all four services. The gateway accepts only mutual TLS,
 * so the client certificate and the CA are required.
 */
export function createMtlsTransport(options: MtlsTransportOptions): Transport {
  const url = new URL(options.baseUrl);
  if (url.protocol !== "https:") {
    // The gateway never serves plain text; fail here rather than with an opaque HTTP/2 error.
    throw new TypeError(`baseUrl must use https:, got ${url.protocol}`);
  }
  return createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: options.interceptors,
    nodeOptions: {
      ca: options.caPem,
      cert: options.certPem,
      key: options.keyPem,
      ...(options.servername === undefined ? {} : { servername: options.servername }),
    },
  });
}

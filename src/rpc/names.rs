//! The RPCs this server serves, by path: bounded names for spans, logs and metric labels.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message as _;

/// Service and method of one RPC; `_other` for paths the server does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcName {
    /// Fully qualified, e.g. `etjanstekort.v1.DeregistrationService`.
    pub service: &'static str,
    pub method: &'static str,
    /// `service/method`: the span name.
    pub full: &'static str,
}

const OTHER: RpcName = RpcName {
    service: "_other",
    method: "_other",
    full: "_other",
};

/// The console's pages (every path under `/console`), one name: paths are not labels.
pub const CONSOLE: RpcName = RpcName {
    service: "console",
    method: "page",
    full: "console/page",
};

/// Served besides the API: health and reflection.
const INFRASTRUCTURE: [(&str, &str); 4] = [
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
];

fn known() -> &'static HashMap<String, RpcName> {
    static KNOWN: OnceLock<HashMap<String, RpcName>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut rpcs: Vec<(String, String)> = INFRASTRUCTURE
            .iter()
            .map(|(s, m)| ((*s).to_owned(), (*m).to_owned()))
            .collect();
        // The API's methods, from the same descriptors reflection serves.
        if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::api::pb::FILE_DESCRIPTOR_SET)
        {
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        rpcs.push((
                            format!("{}.{}", file.package(), service.name()),
                            method.name().to_owned(),
                        ));
                    }
                }
            }
        }
        // Leaked once per process, a fixed few dozen strings: label values stay `&'static`.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        rpcs.into_iter()
            .map(|(service, method)| {
                let path = format!("/{service}/{method}");
                let full = leak(format!("{service}/{method}"));
                let name = RpcName {
                    service: leak(service),
                    method: leak(method),
                    full,
                };
                (path, name)
            })
            .collect()
    })
}

/// The RPC at `path` (`/package.Service/Method`).
pub fn lookup(path: &str) -> RpcName {
    if path == crate::console::PATH || path.starts_with("/console/") {
        return CONSOLE;
    }
    known().get(path).copied().unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_paths_are_named_and_others_are_bounded() {
        let n = lookup("/etjanstekort.v1.DeregistrationService/CreateDeregistration");
        assert_eq!(n.service, "etjanstekort.v1.DeregistrationService");
        assert_eq!(n.method, "CreateDeregistration");
        assert_eq!(
            n.full,
            "etjanstekort.v1.DeregistrationService/CreateDeregistration"
        );
        assert_eq!(
            lookup("/etjanstekort.v1.OperationsService/ResolveDeregistration").method,
            "ResolveDeregistration"
        );
        assert_eq!(
            lookup("/grpc.health.v1.Health/Check").service,
            "grpc.health.v1.Health"
        );
        assert_eq!(lookup("/console"), CONSOLE);
        assert_eq!(lookup("/console/cases/x"), CONSOLE);
        assert_eq!(lookup("/consoles"), OTHER);
        for odd in [
            "/etjanstekort.v1.DeregistrationService/Nope",
            "/x.Y/Z",
            "/",
            "",
        ] {
            assert_eq!(lookup(odd), OTHER, "{odd}");
        }
    }
}

//! The headless Service (stable DNS per node) and the client Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Inputs, NODE_PORT, child_meta, headless_name, selector_labels};

fn port() -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port: NODE_PORT,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// `NAME-nodes`: headless, publishing not-ready pods so peers resolve during start-up.
pub fn build_headless_service(inputs: &Inputs<'_>) -> Service {
    Service {
        metadata: child_meta(inputs, headless_name(&inputs.name()), "nodes"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&inputs.name())),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `NAME`: the clients' Service (ready nodes only).
pub fn build_client_service(inputs: &Inputs<'_>) -> Service {
    Service {
        metadata: child_meta(inputs, inputs.name(), "client"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&inputs.name())),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn headless_and_client_services_select_the_nodes() {
        let memory = memory(serde_json::json!({}));
        let headless = with_inputs(&memory, build_headless_service);
        let client = with_inputs(&memory, build_client_service);
        let h = headless.spec.expect("spec");
        assert_eq!(h.cluster_ip.as_deref(), Some("None"));
        assert_eq!(h.publish_not_ready_addresses, Some(true));
        assert_eq!(headless.metadata.name.as_deref(), Some("mem-nodes"));
        let c = client.spec.expect("spec");
        assert_eq!(c.selector, h.selector);
        assert_eq!(c.ports.expect("ports")[0].port, 8080);
        assert_eq!(client.metadata.name.as_deref(), Some("mem"));
    }
}

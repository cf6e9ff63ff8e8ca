//! The NetworkPolicy: clients reach the nodes' HTTP port; only the memory's own nodes
//! reach the peer port that serves Raft (a replicated node serves its Raft RPCs, and the
//! requests other nodes forward to it, on a port of its own). Everything else is refused.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Inputs, NODE_PORT, PEER_PORT, child_meta, selector_labels};

fn port(number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// `NAME`: ingress to the nodes on the HTTP port from anywhere (clients, the operator,
/// the cleanup Jobs, Prometheus), on the peer port from the memory's nodes only.
pub fn build_network_policy(inputs: &Inputs<'_>) -> NetworkPolicy {
    let nodes = LabelSelector {
        match_labels: Some(selector_labels(&inputs.name())),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        metadata: child_meta(inputs, inputs.name(), "network-policy"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(nodes.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(NODE_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(nodes),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![port(PEER_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn only_the_nodes_reach_the_peer_port() {
        let memory = memory(serde_json::json!({"replicas": 3}));
        let spec = with_inputs(&memory, build_network_policy)
            .spec
            .expect("spec");
        let rules = spec.ingress.expect("rules");
        let ports = |r: &NetworkPolicyIngressRule| {
            r.ports
                .iter()
                .flatten()
                .filter_map(|p| p.port.clone())
                .collect::<Vec<_>>()
        };
        let http = rules
            .iter()
            .find(|r| ports(r) == [IntOrString::Int(NODE_PORT)])
            .expect("http rule");
        assert!(http.from.is_none(), "clients reach the HTTP port");
        let peer = rules
            .iter()
            .find(|r| ports(r) == [IntOrString::Int(PEER_PORT)])
            .expect("peer rule");
        let from = peer.from.as_ref().expect("a source");
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(selector_labels("mem"))
        );
        assert!(from[0].namespace_selector.is_none(), "this namespace only");
        assert_eq!(rules.len(), 2, "nothing else gets in");
    }
}

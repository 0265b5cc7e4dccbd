//! The admin gRPC service of a node (`proto/specie/v1/admin.proto`): install, clear and list
//! the node's live fault rules ([`crate::live_faults`]).
//!
//! Only `admin:` identities are served: a request over a connection whose certificate is a
//! node's or a client's (or has no recognised identity) is refused with `PERMISSION_DENIED`,
//! logged to stderr and counted in `specie_admin_refused_total{reason}`. Without TLS there are
//! no identities: the service then answers only if the cluster file asked for plaintext.

use crate::live_faults::{Direction, LiveFaultError, LiveFaults, Pattern, RuleKind, RuleSpec};
use crate::transport::{peer_addr, peer_identity, Role};
use specie_protocol::grpc::admin as g;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The admin service of one node.
#[derive(Debug, Clone)]
pub struct AdminService {
    faults: Arc<LiveFaults>,
    plaintext_allowed: bool,
}

impl AdminService {
    /// The service over `faults`; `plaintext_allowed` when the cluster file says plaintext
    /// (then requests carry no identity and are served).
    pub fn new(faults: Arc<LiveFaults>, plaintext_allowed: bool) -> AdminService {
        AdminService {
            faults,
            plaintext_allowed,
        }
    }

    /// The tonic service to add to the node's gRPC server.
    pub fn server(self) -> g::AdminServer<AdminService> {
        g::AdminServer::new(self)
    }

    /// Who asked, if they may: `admin:NAME`, or `plaintext` in a plaintext cluster.
    fn authorize<T>(&self, request: &Request<T>, rpc: &str) -> Result<String, Status> {
        let identity = peer_identity(request);
        let (reason, who) = match identity {
            Some(id) if id.role == Role::Admin => return Ok(id.to_string()),
            None if self.plaintext_allowed => return Ok("plaintext client".into()),
            Some(id) => (
                match id.role {
                    Role::Client => "client_certificate",
                    _ => "node_certificate",
                },
                id.to_string(),
            ),
            None => ("no_identity", "no recognised identity".to_string()),
        };
        let from = peer_addr(request).map_or_else(|| "?".into(), |a| a.to_string());
        eprintln!(
            "specie node {}: refused admin {rpc} from {from}: {who} is not an admin certificate",
            self.faults.node()
        );
        metrics::counter!("specie_admin_refused_total", "reason" => reason).increment(1);
        Err(Status::permission_denied(format!(
            "the admin service serves admin certificates only; this connection presented {who}"
        )))
    }
}

fn direction_from(d: i32) -> Result<Direction, LiveFaultError> {
    match g::FaultDirection::try_from(d) {
        Ok(g::FaultDirection::Both) => Ok(Direction::Both),
        Ok(g::FaultDirection::To) => Ok(Direction::To),
        Ok(g::FaultDirection::From) => Ok(Direction::From),
        Err(_) => Err(LiveFaultError::Invalid {
            field: "direction",
            why: format!("{d} is not a direction (both = 0, to = 1, from = 2)"),
        }),
    }
}

fn direction_to(d: Direction) -> i32 {
    match d {
        Direction::Both => g::FaultDirection::Both as i32,
        Direction::To => g::FaultDirection::To as i32,
        Direction::From => g::FaultDirection::From as i32,
    }
}

fn patterns(field: &'static str, names: &[String]) -> Result<Vec<Pattern>, LiveFaultError> {
    names
        .iter()
        .map(|n| {
            Pattern::parse(n).ok_or_else(|| LiveFaultError::Invalid {
                field,
                why: format!(
                    "`{n}` is not an actor: use central-bank, inst-N, wallet-N, institutions, wallets or wallets-of-inst-N"
                ),
            })
        })
        .collect()
}

/// A rule from its wire form (not yet validated against the cluster: see
/// [`RuleSpec::validate`]).
pub fn rule_from_proto(rule: &g::FaultRule) -> Result<RuleSpec, LiveFaultError> {
    use g::FaultRuleKind as K;
    let kind = match &rule.kind {
        None => {
            return Err(LiveFaultError::Invalid {
                field: "kind",
                why: "is missing: name what the rule does (delay, loss, …)".into(),
            })
        }
        Some(K::Delay(d)) => RuleKind::Delay {
            latency_ms: d.latency_ms,
            jitter_ms: d.jitter_ms,
            correlation: d.correlation,
        },
        Some(K::Loss(l)) => RuleKind::Loss {
            percent: l.percent,
            correlation: l.correlation,
        },
        Some(K::Duplicate(d)) => RuleKind::Duplicate { percent: d.percent },
        Some(K::Reorder(r)) => RuleKind::Reorder {
            percent: r.percent,
            gap: r.gap,
            hold_ms: r.hold_ms,
        },
        Some(K::Corrupt(c)) => RuleKind::Corrupt { percent: c.percent },
        Some(K::Partition(p)) => RuleKind::Partition {
            groups: p
                .groups
                .iter()
                .map(|g| patterns("partition.groups", &g.members))
                .collect::<Result<_, _>>()?,
            direction: direction_from(p.direction)?,
        },
        Some(K::Pause(_)) => RuleKind::Pause,
        Some(K::WriteDelay(w)) => RuleKind::WriteDelay {
            latency_ms: w.latency_ms,
        },
    };
    let targets = if rule.targets.is_empty() {
        None
    } else {
        Some(patterns("targets", &rule.targets)?)
    };
    Ok(RuleSpec {
        kind,
        targets,
        direction: direction_from(rule.direction)?,
        duration: Duration::from_millis(rule.duration_ms),
        seed: rule.seed,
        label: rule.label.clone(),
    })
}

/// The wire form of a rule.
pub fn rule_to_proto(spec: &RuleSpec) -> g::FaultRule {
    use g::FaultRuleKind as K;
    let kind = match &spec.kind {
        RuleKind::Delay {
            latency_ms,
            jitter_ms,
            correlation,
        } => K::Delay(g::DelayFault {
            latency_ms: *latency_ms,
            jitter_ms: *jitter_ms,
            correlation: *correlation,
        }),
        RuleKind::Loss {
            percent,
            correlation,
        } => K::Loss(g::LossFault {
            percent: *percent,
            correlation: *correlation,
        }),
        RuleKind::Duplicate { percent } => K::Duplicate(g::DuplicateFault { percent: *percent }),
        RuleKind::Reorder {
            percent,
            gap,
            hold_ms,
        } => K::Reorder(g::ReorderFault {
            percent: *percent,
            gap: *gap,
            hold_ms: *hold_ms,
        }),
        RuleKind::Corrupt { percent } => K::Corrupt(g::CorruptFault { percent: *percent }),
        RuleKind::Partition { groups, direction } => K::Partition(g::PartitionFault {
            groups: groups
                .iter()
                .map(|g| g::PartitionGroup {
                    members: g.iter().map(Pattern::name).collect(),
                })
                .collect(),
            direction: direction_to(*direction),
        }),
        RuleKind::Pause => K::Pause(g::PauseFault {}),
        RuleKind::WriteDelay { latency_ms } => K::WriteDelay(g::WriteDelayFault {
            latency_ms: *latency_ms,
        }),
    };
    g::FaultRule {
        kind: Some(kind),
        targets: spec.targets.iter().flatten().map(Pattern::name).collect(),
        direction: direction_to(spec.direction),
        duration_ms: spec.duration.as_millis() as u64,
        seed: spec.seed,
        label: spec.label.clone(),
    }
}

fn refused(e: LiveFaultError) -> Status {
    match e {
        LiveFaultError::TooMany(_) => Status::resource_exhausted(e.to_string()),
        LiveFaultError::NoJournal => Status::failed_precondition(e.to_string()),
        LiveFaultError::Invalid { .. } => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl g::Admin for AdminService {
    async fn install_rule(
        &self,
        request: Request<g::InstallRuleRequest>,
    ) -> Result<Response<g::InstallRuleReply>, Status> {
        let who = self.authorize(&request, "InstallRule")?;
        let rule = request
            .into_inner()
            .rule
            .ok_or_else(|| Status::invalid_argument("the request carries no rule"))?;
        let spec = rule_from_proto(&rule).map_err(refused)?;
        let expires_in_ms = spec.duration.as_millis() as u64;
        let id = self.faults.install(spec, &who).map_err(refused)?;
        Ok(Response::new(g::InstallRuleReply {
            id,
            expires_in_ms,
            node: self.faults.node().to_string(),
        }))
    }

    async fn clear_rules(
        &self,
        request: Request<g::ClearRulesRequest>,
    ) -> Result<Response<g::ClearRulesReply>, Status> {
        let who = self.authorize(&request, "ClearRules")?;
        let req = request.into_inner();
        let cleared = if req.all {
            self.faults.clear(None, &who)
        } else {
            self.faults.clear(Some(&req.ids), &who)
        };
        Ok(Response::new(g::ClearRulesReply {
            cleared: cleared as u32,
            node: self.faults.node().to_string(),
        }))
    }

    async fn list_rules(
        &self,
        request: Request<g::ListRulesRequest>,
    ) -> Result<Response<g::ListRulesReply>, Status> {
        self.authorize(&request, "ListRules")?;
        let rules = self
            .faults
            .list()
            .into_iter()
            .map(|r| g::RuleInfo {
                id: r.id,
                kind: r.spec.kind.name().to_string(),
                description: r.spec.describe(),
                remaining_ms: r.remaining.as_millis() as u64,
                injected: r.injected,
                rule: Some(rule_to_proto(&r.spec)),
            })
            .collect();
        Ok(Response::new(g::ListRulesReply {
            node: self.faults.node().to_string(),
            rules,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use specie_protocol::{Address, InstitutionId};

    #[test]
    fn rules_survive_the_wire() {
        let spec = RuleSpec {
            kind: RuleKind::Partition {
                groups: vec![
                    vec![
                        Pattern::Actor(Address::Institution(InstitutionId(0))),
                        Pattern::WalletsOf(InstitutionId(0)),
                    ],
                    vec![Pattern::Actor(Address::CentralBank), Pattern::Institutions],
                ],
                direction: Direction::From,
            },
            targets: None,
            direction: Direction::Both,
            duration: Duration::from_millis(1500),
            seed: 42,
            label: "fault[0]".into(),
        };
        assert_eq!(rule_from_proto(&rule_to_proto(&spec)), Ok(spec));
        let loss = RuleSpec {
            kind: RuleKind::Loss {
                percent: 12.5,
                correlation: 30.0,
            },
            targets: Some(vec![Pattern::Wallets]),
            direction: Direction::To,
            duration: Duration::from_secs(2),
            seed: 1,
            label: String::new(),
        };
        assert_eq!(rule_from_proto(&rule_to_proto(&loss)), Ok(loss));
    }

    #[test]
    fn a_rule_naming_an_unknown_actor_is_refused_with_the_field() {
        let mut rule = rule_to_proto(&RuleSpec {
            kind: RuleKind::Pause,
            targets: Some(vec![Pattern::Wallets]),
            direction: Direction::Both,
            duration: Duration::from_secs(1),
            seed: 0,
            label: String::new(),
        });
        rule.targets = vec!["bank-7".into()];
        let err = rule_from_proto(&rule).expect_err("not an actor");
        assert!(err.to_string().contains("`targets`"), "{err}");
        assert!(err.to_string().contains("bank-7"), "{err}");
    }
}

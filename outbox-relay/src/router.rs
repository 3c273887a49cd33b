//! Routing events to named publishers.

use std::sync::Arc;

use futures::future::join_all;
use outbox_core::{DynPublisher, Envelope, Error, ErrorKind, PublishOutcome, Publisher};

use crate::config::RouteConfig;

/// One rule, resolved to a publisher index.
#[derive(Debug)]
struct Rule {
    destination_prefix: Option<String>,
    event_type: Option<String>,
    target: usize,
}

impl Rule {
    fn matches(&self, e: &Envelope) -> bool {
        let dest = self
            .destination_prefix
            .as_deref()
            .is_none_or(|p| e.destination().starts_with(p));
        let ty = self
            .event_type
            .as_deref()
            .is_none_or(|t| match t.strip_suffix('*') {
                Some(prefix) => e.event_type().starts_with(prefix),
                None => e.event_type() == t,
            });
        dest && ty
    }
}

/// Sends each event to the publisher of the first rule it matches (or the default), all
/// publishers of a batch at once, and puts the outcomes back in the batch's order. An event
/// nothing routes is a permanent error naming its destination and type.
pub struct Router {
    publishers: Vec<(String, Arc<dyn DynPublisher>)>,
    rules: Vec<Rule>,
    default: Option<usize>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "publishers",
                &self.publishers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("rules", &self.rules)
            .field("default", &self.default)
            .finish()
    }
}

impl Router {
    /// A router over named `publishers`; `routes` and `default` name publishers in it
    /// (the config checks that they exist).
    pub fn new(
        publishers: Vec<(String, Arc<dyn DynPublisher>)>,
        routes: &[RouteConfig],
        default: Option<&str>,
    ) -> Self {
        let index = |name: &str| publishers.iter().position(|(n, _)| n == name);
        let rules = routes
            .iter()
            .filter_map(|r| {
                index(&r.publisher).map(|target| Rule {
                    destination_prefix: r.destination_prefix.clone(),
                    event_type: r.event_type.clone(),
                    target,
                })
            })
            .collect();
        let default = default.and_then(index);
        Router {
            publishers,
            rules,
            default,
        }
    }

    fn target(&self, e: &Envelope) -> Option<usize> {
        self.rules
            .iter()
            .find(|r| r.matches(e))
            .map(|r| r.target)
            .or(self.default)
    }
}

impl Publisher for Router {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.publishers.len()];
        let mut outcomes: Vec<Option<PublishOutcome>> = events.iter().map(|_| None).collect();
        for (i, e) in events.iter().enumerate() {
            match self.target(e) {
                Some(t) => groups[t].push(i),
                None => {
                    outcomes[i] = Some(PublishOutcome::Failed(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "no route for destination {:?}, event type {:?}, and no default_publisher",
                            e.destination(),
                            e.event_type()
                        ),
                    )))
                }
            }
        }
        let sends = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(t, g)| {
                let batch: Vec<Envelope> = g.iter().map(|&i| events[i].clone()).collect();
                let publisher = Arc::clone(&self.publishers[t].1);
                async move { (g, publisher.publish_dyn(&batch).await) }
            });
        for (g, results) in join_all(sends).await {
            for (&i, o) in g.iter().zip(results) {
                outcomes[i] = Some(o);
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    PublishOutcome::Failed(Error::new(
                        ErrorKind::Other,
                        "the publisher returned fewer outcomes than events",
                    ))
                })
            })
            .collect()
    }

    /// `true` when every publisher it routes to keeps runs in order: each gets its events
    /// of a call in slice order, in one call. (A key whose events go to two brokers has no
    /// order between them in any case.)
    fn ordered_runs(&self) -> bool {
        self.publishers.iter().all(|(_, p)| p.ordered_runs_dyn())
    }

    /// The system of the publisher `event` is routed to.
    fn messaging_system(&self, event: &Envelope) -> &'static str {
        self.target(event).map_or("other", |t| {
            self.publishers[t].1.messaging_system_dyn(event)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::InMemoryPublisher;

    fn ev(dest: &str, ty: &str) -> Envelope {
        Envelope::builder("order", "k", ty, dest)
            .build()
            .expect("valid")
    }

    #[tokio::test]
    async fn routes_by_prefix_and_type_and_keeps_order() {
        let (a, b) = (InMemoryPublisher::new(), InMemoryPublisher::new());
        let routes = vec![
            RouteConfig {
                destination_prefix: Some("orders.".into()),
                event_type: None,
                publisher: "a".into(),
            },
            RouteConfig {
                destination_prefix: None,
                event_type: Some("user.*".into()),
                publisher: "b".into(),
            },
        ];
        let router = Router::new(
            vec![
                ("a".into(), Arc::new(a.clone()) as Arc<dyn DynPublisher>),
                ("b".into(), Arc::new(b.clone()) as Arc<dyn DynPublisher>),
            ],
            &routes,
            None,
        );
        let events = [
            ev("orders.eu", "order.placed"),
            ev("users", "user.created"),
            ev("misc", "other.thing"),
        ];
        let out = router.publish(&events).await;
        assert!(out[0].is_published() && out[1].is_published());
        match &out[2] {
            PublishOutcome::Failed(e) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("misc"), "{e}");
            }
            other => panic!("an unrouted event was not refused: {other:?}"),
        }
        assert_eq!(a.delivered_ids(), vec![events[0].id()]);
        assert_eq!(b.delivered_ids(), vec![events[1].id()]);
    }

    #[test]
    fn takes_runs_only_when_every_publisher_keeps_them_in_order() {
        let router = |second_ordered: bool| {
            let second = if second_ordered {
                InMemoryPublisher::new().with_ordered_runs(true)
            } else {
                InMemoryPublisher::new()
            };
            Router::new(
                vec![
                    (
                        "a".into(),
                        Arc::new(InMemoryPublisher::new().with_ordered_runs(true))
                            as Arc<dyn DynPublisher>,
                    ),
                    ("b".into(), Arc::new(second) as Arc<dyn DynPublisher>),
                ],
                &[],
                Some("a"),
            )
        };
        assert!(router(true).ordered_runs());
        assert!(!router(false).ordered_runs());
    }
}

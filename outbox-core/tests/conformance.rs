//! The conformance suites against the in-memory store and publisher: the suites' own
//! self-check, and the reference behaviour adapters are held to.

use std::time::Duration;

use outbox_core::testkit::{
    PublisherHarness, Received, StoreHarness, run_operations_suite, run_publisher_suite,
    run_store_suite,
};
use outbox_core::{Envelope, ErrorKind, InMemoryPublisher, InMemoryStore, Result};

struct MemStore(InMemoryStore);

impl StoreHarness for MemStore {
    type Store = InMemoryStore;
    fn store(&self) -> InMemoryStore {
        self.0.clone()
    }
    async fn transact(&self, events: Vec<Envelope>, commit: bool) -> Result<()> {
        let mut tx = self.0.begin();
        for e in events {
            tx.enqueue(e);
        }
        if commit {
            tx.commit()
        } else {
            tx.rollback();
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_passes_the_store_suite() {
    run_store_suite(|| async { MemStore(InMemoryStore::new()) }).await;
    run_operations_suite(|| async { MemStore(InMemoryStore::new()) }).await;
}

struct MemPublisher {
    publisher: InMemoryPublisher,
    destination: String,
    dedupes: bool,
}

impl PublisherHarness for MemPublisher {
    type Publisher = InMemoryPublisher;
    fn publisher(&self) -> &InMemoryPublisher {
        &self.publisher
    }
    fn destination(&self) -> String {
        self.destination.clone()
    }
    async fn receive(&self, n: usize, within: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got: Vec<Received> = self
                .publisher
                .deliveries()
                .into_iter()
                .filter(|d| d.envelope.destination() == self.destination)
                .map(|d| Received {
                    event_id: Some(d.envelope.id()),
                    dedupe_id: Some(d.envelope.id().to_string()),
                    key: Some(d.envelope.ordering_key().to_owned()),
                    payload: d.envelope.payload().clone(),
                    headers: d.envelope.headers().clone(),
                })
                .collect();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    fn broker_dedupes(&self) -> bool {
        self.dedupes
    }
    fn missing_destination(&self) -> Option<String> {
        Some("no.such.topic".to_owned())
    }
}

fn mem_publisher(dedupes: bool) -> MemPublisher {
    let publisher = if dedupes {
        InMemoryPublisher::new().with_dedupe()
    } else {
        InMemoryPublisher::new()
    };
    publisher.fail_destination("no.such.topic", ErrorKind::DestinationNotFound);
    MemPublisher {
        publisher,
        destination: outbox_core::testkit::unique_name("dest"),
        dedupes,
    }
}

#[tokio::test]
async fn in_memory_publisher_passes_the_publisher_suite() {
    run_publisher_suite(|| async { mem_publisher(false) }).await;
}

#[tokio::test]
async fn deduplicating_in_memory_publisher_passes_the_publisher_suite() {
    run_publisher_suite(|| async { mem_publisher(true) }).await;
}

#[tokio::test]
async fn in_memory_publisher_with_ordered_runs_passes_the_publisher_suite() {
    run_publisher_suite(|| async {
        let mut h = mem_publisher(true);
        h.publisher = h.publisher.with_ordered_runs(true);
        h
    })
    .await;
}

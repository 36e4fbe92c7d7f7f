//! The job runner with a scripted job kind: outcomes, throttling, back-off, resume after a lost
//! runner, cancel and retry — on SQLite and, when configured, PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_server::jobs::{BoxFut, ItemOutcome, JobKind, JobRun, JobRunner, RunnerConfig};
use keyward_store::{JobItemRecord, JobRecord, NewUser, Store, testing};
use serde_json::json;
use uuid::Uuid;

/// A user and the credential id an attempt's item carried as its intent.
type Intent = (Uuid, Option<Vec<u8>>);

/// What the scripted kind answers for a user, attempt by attempt (the last answer repeats).
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<HashMap<Uuid, Vec<ItemOutcome>>>>,
    calls: Arc<Mutex<Vec<(Uuid, i32)>>>,
    /// The intent each attempt arrived with.
    intents: Arc<Mutex<Vec<Intent>>>,
    in_flight: Arc<Mutex<(usize, usize)>>,
    fail_start: Option<String>,
    delay: Duration,
}

struct ScriptRun(Script);

impl JobKind for Script {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn start<'a>(&'a self, _job: &'a JobRecord) -> BoxFut<'a, Result<Arc<dyn JobRun>, String>> {
        Box::pin(async move {
            match &self.fail_start {
                Some(r) => Err(r.clone()),
                None => Ok(Arc::new(ScriptRun(self.clone())) as Arc<dyn JobRun>),
            }
        })
    }
}

impl JobRun for ScriptRun {
    fn bucket(&self) -> String {
        "tenant".into()
    }
    fn run_item<'a>(&'a self, item: &'a JobItemRecord) -> BoxFut<'a, ItemOutcome> {
        Box::pin(async move {
            {
                let mut f = self.0.in_flight.lock().expect("lock");
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
            self.0
                .calls
                .lock()
                .expect("lock")
                .push((item.user_id, item.attempts));
            self.0
                .intents
                .lock()
                .expect("lock")
                .push((item.user_id, item.intent_credential_id.clone()));
            tokio::time::sleep(self.0.delay).await;
            let out = {
                let mut a = self.0.answers.lock().expect("lock");
                let list = a.entry(item.user_id).or_default();
                if list.len() > 1 {
                    list.remove(0)
                } else {
                    list.first().cloned().unwrap_or(ItemOutcome::Done(None))
                }
            };
            self.0.in_flight.lock().expect("lock").0 -= 1;
            out
        })
    }
    fn summary(&self) -> Option<serde_json::Value> {
        Some(json!({"scripted": true}))
    }
}

fn cfg(per_bucket: usize) -> RunnerConfig {
    RunnerConfig {
        poll: Duration::from_millis(50),
        per_bucket,
        backoff: Duration::from_millis(50),
        max_attempts: 3,
        single_process: true,
        ..RunnerConfig::default()
    }
}

async fn job_with_users(store: &Store, n: usize) -> (Uuid, Uuid, Vec<Uuid>) {
    let mut tx = store.begin().await.expect("begin");
    let org = tx
        .insert_organisation(&format!("org-{}", Uuid::new_v4()))
        .await
        .expect("org");
    let mut users = Vec::new();
    for i in 0..n {
        let u = NewUser {
            upn: format!("u{i}@example.com"),
            source: "api".into(),
            ..Default::default()
        };
        users.push(tx.insert_user(org.id, &u).await.expect("user").id);
    }
    let job = tx
        .insert_job(org.id, "scripted", &json!({}), "admin:test", &users)
        .await
        .expect("job");
    tx.commit().await.expect("commit");
    (org.id, job.id, users)
}

async fn wait_final(store: &Store, org: Uuid, job: Uuid) -> JobRecord {
    for _ in 0..400 {
        let j = store.job(org, job).await.expect("job").expect("exists");
        if matches!(j.state.as_str(), "done" | "failed" | "cancelled") {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job did not finish in time");
}

#[tokio::test]
async fn items_end_done_failed_or_after_retries_and_concurrency_is_bounded() {
    for db in testing::all().await {
        let store = db.store.clone();
        let (org, job, users) = job_with_users(&store, 12).await;
        let script = Script {
            delay: Duration::from_millis(20),
            ..Default::default()
        };
        {
            let mut a = script.answers.lock().expect("lock");
            a.insert(
                users[0],
                vec![ItemOutcome::Failed {
                    reason: "refused".into(),
                    request_id: Some("req-1".into()),
                }],
            );
            a.insert(
                users[1],
                vec![
                    ItemOutcome::Throttled {
                        after: Duration::from_millis(100),
                        reason: "429".into(),
                        request_id: None,
                    },
                    ItemOutcome::Done(Some(json!({"method_id": "m1"}))),
                ],
            );
            a.insert(
                users[2],
                vec![
                    ItemOutcome::Transient {
                        reason: "503".into(),
                        request_id: None,
                    },
                    ItemOutcome::Done(None),
                ],
            );
            a.insert(
                users[3],
                vec![ItemOutcome::Transient {
                    reason: "always 503".into(),
                    request_id: Some("req-3".into()),
                }],
            );
        }
        let mut runner = JobRunner::new(store.clone(), cfg(3));
        runner.register(Arc::new(script.clone()));
        let handle = Arc::new(runner).spawn(std::future::pending());
        let j = wait_final(&store, org, job).await;
        handle.abort();

        assert_eq!(j.state, "failed", "two items failed");
        assert_eq!((j.total, j.done, j.failed), (12, 10, 2));
        assert_eq!(j.result, Some(json!({"scripted": true})));
        let items = store.job_items(org, job, None, 100).await.expect("items");
        let by_user: HashMap<Uuid, &JobItemRecord> = items.iter().map(|i| (i.user_id, i)).collect();
        assert_eq!(by_user[&users[0]].error.as_deref(), Some("refused"));
        assert_eq!(by_user[&users[0]].request_id.as_deref(), Some("req-1"));
        assert_eq!(
            by_user[&users[0]].attempts, 1,
            "a definite failure is not retried"
        );
        assert_eq!(by_user[&users[1]].state, "done");
        assert_eq!(by_user[&users[1]].result, Some(json!({"method_id": "m1"})));
        assert_eq!(by_user[&users[2]].attempts, 2);
        assert_eq!(
            by_user[&users[3]].attempts, 3,
            "transient failures stop at max_attempts"
        );
        assert!(
            by_user[&users[3]]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("always 503"))
        );
        let peak = script.in_flight.lock().expect("lock").1;
        assert!(peak <= 3, "at most per_bucket items in flight, saw {peak}");
        assert!(peak >= 2, "items do run concurrently, saw {peak}");
    }
}

#[tokio::test]
async fn a_job_whose_start_fails_is_failed_with_the_reason_and_unknown_kinds_too() {
    let db = testing::sqlite().await;
    let store = db.store.clone();
    let (org, job, _) = job_with_users(&store, 2).await;
    let mut tx = store.begin().await.expect("begin");
    let other = tx
        .insert_job(org, "no-such-kind", &json!({}), "a", &[])
        .await
        .expect("job");
    tx.commit().await.expect("commit");
    let script = Script {
        fail_start: Some("the directory refused the client secret".into()),
        ..Default::default()
    };
    let mut runner = JobRunner::new(store.clone(), cfg(2));
    runner.register(Arc::new(script.clone()));
    let handle = Arc::new(runner).spawn(std::future::pending());
    let j = wait_final(&store, org, job).await;
    let o = wait_final(&store, org, other.id).await;
    handle.abort();
    assert_eq!(j.state, "failed");
    assert_eq!(
        j.error.as_deref(),
        Some("the directory refused the client secret")
    );
    assert!(script.calls.lock().expect("lock").is_empty(), "no item ran");
    assert_eq!(o.state, "failed");
    assert!(
        o.error
            .as_deref()
            .is_some_and(|e| e.contains("unknown job kind"))
    );
}

#[tokio::test]
async fn a_crashed_runners_items_are_resumed_with_their_attempts_and_intent() {
    for db in testing::all().await {
        let store = db.store.clone();
        let (org, job, users) = job_with_users(&store, 3).await;
        // A runner claims the job, starts an item, records an intent and dies.
        let dead_lease = keyward_store::now() + chrono::Duration::seconds(600);
        store
            .claim_job("dead-runner", dead_lease)
            .await
            .expect("claim")
            .expect("job");
        store
            .start_item(job, users[0])
            .await
            .expect("start")
            .expect("started");
        store
            .set_item_intent(job, users[0], Some(b"cred-1"))
            .await
            .expect("intent");

        let script = Script::default();
        let mut runner = JobRunner::new(store.clone(), cfg(2));
        runner.register(Arc::new(script.clone()));
        // single_process drops the dead runner's lease at start, so no 10-minute wait.
        let handle = Arc::new(runner).spawn(std::future::pending());
        let j = wait_final(&store, org, job).await;
        handle.abort();
        assert_eq!((j.state.as_str(), j.done), ("done", 3));
        let calls = script.calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 3, "each item ran once more: {calls:?}");
        assert!(
            calls.contains(&(users[0], 2)),
            "the interrupted item resumes as attempt 2"
        );
        let intents = script.intents.lock().expect("lock").clone();
        assert!(
            intents.contains(&(users[0], Some(b"cred-1".to_vec()))),
            "the resumed attempt gets the intent, to reconcile: {intents:?}"
        );
        let it = store
            .job_item(job, users[0])
            .await
            .expect("item")
            .expect("exists");
        assert_eq!(
            it.intent_credential_id, None,
            "a done item has nothing left to reconcile"
        );
    }
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_retry_reruns_only_failed_items() {
    let db = testing::sqlite().await;
    let store = db.store.clone();
    let (org, job, users) = job_with_users(&store, 40).await;
    let script = Script {
        delay: Duration::from_millis(30),
        ..Default::default()
    };
    script.answers.lock().expect("lock").insert(
        users[0],
        vec![
            ItemOutcome::Failed {
                reason: "first time".into(),
                request_id: None,
            },
            ItemOutcome::Done(None),
        ],
    );
    let mut runner = JobRunner::new(store.clone(), cfg(2));
    runner.register(Arc::new(script.clone()));
    let handle = Arc::new(runner).spawn(std::future::pending());
    // Let some items run, then cancel.
    for _ in 0..200 {
        if script.calls.lock().expect("lock").len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = store
        .cancel_job(org, job)
        .await
        .expect("cancel")
        .expect("job");
    assert_eq!(c.state, "cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ran = script.calls.lock().expect("lock").len();
    assert!(ran < 40, "cancel stopped the job early ({ran} items ran)");
    let items = store.job_items(org, job, None, 100).await.expect("items");
    assert!(items.iter().any(|i| i.state == "cancelled"));
    assert!(items.iter().all(|i| i.state != "queued"));

    // Retry puts failed and cancelled items back; the job runs to the end.
    let n = store
        .retry_job(org, job)
        .await
        .expect("retry")
        .expect("job");
    assert!(n >= 1);
    let j = wait_final(&store, org, job).await;
    handle.abort();
    assert_eq!((j.state.as_str(), j.done, j.failed), ("done", 40, 0));
    let calls = script.calls.lock().expect("lock").clone();
    assert_eq!(
        calls.iter().filter(|(u, _)| *u == users[0]).count(),
        2,
        "the failed item ran again"
    );
    assert_eq!(calls.len(), 40 + 1, "no item that was done ran twice");
}

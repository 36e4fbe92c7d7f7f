//! The simulated tenant: directory objects, passkeys, tokens, throttling and injected faults.
//!
//! Everything sits behind one mutex in [`Simulator`]. Requests are short (at most one page of 999
//! users is serialised while the lock is held), so a single lock keeps the model simple and every
//! change atomic, which is what makes the delta bookkeeping trustworthy.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::SimConfig;
use crate::webauthn::CosePublicKey;

/// One directory user, as the simulator keeps it.
#[derive(Debug, Clone)]
pub struct SimUser {
    pub id: String,
    pub user_principal_name: String,
    pub mail: Option<String>,
    pub display_name: String,
    pub given_name: String,
    pub surname: String,
    pub job_title: Option<String>,
    pub account_enabled: bool,
    pub user_type: String,
    /// Sequence number of the last change, for delta queries.
    pub seq: u64,
}

/// A member of a group: a user or a nested group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    User(String),
    Group(String),
}

#[derive(Debug, Clone)]
pub struct SimGroup {
    pub id: String,
    pub display_name: String,
    pub members: Vec<Member>,
}

/// A registered passkey (fido2AuthenticationMethod) with what sign-in needs to verify it.
#[derive(Debug, Clone)]
pub struct StoredMethod {
    pub id: String,
    pub display_name: String,
    pub created: DateTime<Utc>,
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CosePublicKey,
    pub counter: u32,
    pub attested: bool,
    pub attestation_thumbprints: Vec<String>,
    pub backup_eligible: bool,
}

/// A Temporary Access Pass as Graph keeps it (the pass text itself is shown once, then dropped).
#[derive(Debug, Clone)]
pub struct StoredTap {
    pub id: String,
    pub created: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub lifetime_minutes: u32,
    pub usable_once: bool,
}

/// A fault queued through the control API; each one is consumed by one Graph request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status (5xx usually) and an optional Retry-After in seconds.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Answer 429 TooManyRequests with this Retry-After in seconds.
    Throttle { retry_after: u64 },
    /// Drop the connection without a complete response.
    Drop,
    /// Answer 200 with a body that is not valid JSON.
    Malformed,
}

/// The FIDO2 authentication method configuration, in Graph's JSON shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fido2Policy {
    pub state: String,
    pub is_self_service_registration_allowed: bool,
    pub is_attestation_enforced: bool,
    pub key_restrictions: KeyRestrictions,
    pub include_targets: Vec<PolicyTarget>,
    #[serde(default)]
    pub exclude_targets: Vec<PolicyTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRestrictions {
    pub is_enforced: bool,
    /// `allow` or `block`.
    pub enforcement_type: String,
    pub aa_guids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTarget {
    /// `group` (Graph also knows `user` for some methods).
    pub target_type: String,
    /// A group id, or `all_users`.
    pub id: String,
}

impl Default for Fido2Policy {
    fn default() -> Self {
        Fido2Policy {
            state: "enabled".into(),
            is_self_service_registration_allowed: true,
            is_attestation_enforced: false,
            key_restrictions: KeyRestrictions {
                is_enforced: false,
                enforcement_type: "block".into(),
                aa_guids: Vec::new(),
            },
            include_targets: vec![PolicyTarget {
                target_type: "group".into(),
                id: "all_users".into(),
            }],
            exclude_targets: Vec::new(),
        }
    }
}

/// Why a delta token is refused, set through the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DeltaReset {
    #[serde(rename = "syncStateNotFound")]
    SyncStateNotFound,
    #[serde(rename = "resyncRequired")]
    ResyncRequired,
}

impl DeltaReset {
    pub fn code(self) -> &'static str {
        match self {
            DeltaReset::SyncStateNotFound => "syncStateNotFound",
            DeltaReset::ResyncRequired => "resyncRequired",
        }
    }
}

/// A pending sign-in challenge for the `/_sim/signin` endpoint.
#[derive(Debug, Clone)]
pub struct SigninChallenge {
    pub challenge: Vec<u8>,
    pub expires: Instant,
}

/// The whole mutable state of the simulated tenant.
#[derive(Debug)]
pub struct Data {
    pub users: BTreeMap<String, SimUser>,
    pub upn_index: HashMap<String, String>,
    pub groups: BTreeMap<String, SimGroup>,
    pub methods: HashMap<String, Vec<StoredMethod>>,
    pub taps: HashMap<String, StoredTap>,
    /// Removed users: (sequence number, id).
    pub tombstones: Vec<(u64, String)>,
    pub seq: u64,
    /// Delta tokens carry the epoch they were issued in; bumping it invalidates them.
    pub delta_epoch: u64,
    pub delta_reset: DeltaReset,
    pub tokens: HashMap<String, Instant>,
    pub faults: VecDeque<Fault>,
    pub latency: Duration,
    pub forbid: bool,
    pub writes: VecDeque<Instant>,
    pub write_limit: u32,
    pub write_window: Duration,
    /// Resource units spent in the last 10 s: (when, cost).
    pub reads: VecDeque<(Instant, u32)>,
    pub read_units: u32,
    pub read_limit: u32,
    pub policy: Fido2Policy,
    pub consenting_admin: String,
    pub used_challenges: HashSet<Vec<u8>>,
    /// Roots trusted when attestation is enforced (the simulator's stand-in for FIDO MDS).
    pub attestation_roots: Vec<Vec<u8>>,
    pub signin: HashMap<String, SigninChallenge>,
    pub client_secret: String,
    pub client_certificates: Vec<Vec<u8>>,
    pub token_lifetime: Duration,
    /// Counts of Graph requests seen, by outcome, for tests and benchmarks.
    pub requests: u64,
    /// Access tokens issued so far.
    pub tokens_issued: u64,
}

/// A shareable handle to the simulated tenant.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: SimConfig,
    pub data: Mutex<Data>,
    /// AES-256-GCM key that seals creationOptions challenges (stateless, like Entra's JWE).
    pub challenge_key: aws_lc_rs::aead::LessSafeKey,
}

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Tim",
    "Hedy",
    "John",
    "Katherine",
    "Niklaus",
    "Joan",
    "Donald",
    "Sophie",
    "Whitfield",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Backus",
    "Johnson",
    "Wirth",
    "Clarke",
    "Knuth",
    "Wilson",
    "Diffie",
];
const TITLES: &[&str] = &[
    "Engineer",
    "Analyst",
    "Manager",
    "Designer",
    "Accountant",
    "Nurse",
];

/// Builds a version-4-shaped UUID string from the seeded generator, so ids repeat across runs.
pub fn seeded_uuid(rng: &mut StdRng) -> String {
    let bytes: [u8; 16] = rng.r#gen();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl Data {
    fn new(config: &SimConfig) -> Data {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut data = Data {
            users: BTreeMap::new(),
            upn_index: HashMap::new(),
            groups: BTreeMap::new(),
            methods: HashMap::new(),
            taps: HashMap::new(),
            tombstones: Vec::new(),
            seq: 0,
            delta_epoch: 1,
            delta_reset: DeltaReset::SyncStateNotFound,
            tokens: HashMap::new(),
            faults: VecDeque::new(),
            latency: config.latency,
            forbid: false,
            writes: VecDeque::new(),
            write_limit: config.write_limit,
            reads: VecDeque::new(),
            read_units: 0,
            // Graph's identity limit per app and tenant scales with tenant size.
            read_limit: config.read_limit.unwrap_or(match config.users {
                0..50 => 3_500,
                50..=500 => 5_000,
                _ => 8_000,
            }),
            write_window: config.write_window,
            policy: config.policy.clone(),
            consenting_admin: config.consenting_admin.to_lowercase(),
            used_challenges: HashSet::new(),
            attestation_roots: config.attestation_roots.clone(),
            signin: HashMap::new(),
            client_secret: config.client_secret.clone(),
            client_certificates: config.client_certificates.clone(),
            token_lifetime: config.token_lifetime,
            requests: 0,
            tokens_issued: 0,
        };
        let mut ids = Vec::with_capacity(config.users);
        for i in 0..config.users {
            let id = seeded_uuid(&mut rng);
            let (first, last) = (
                FIRST[rng.gen_range(0..FIRST.len())],
                LAST[rng.gen_range(0..LAST.len())],
            );
            let upn = if i == 0 {
                config.consenting_admin.clone()
            } else {
                format!(
                    "{}.{}{}@{}",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    i,
                    config.domain
                )
            };
            let user = SimUser {
                id: id.clone(),
                mail: Some(upn.clone()),
                user_principal_name: upn,
                display_name: format!("{first} {last}"),
                given_name: first.into(),
                surname: last.into(),
                job_title: Some(TITLES[i % TITLES.len()].into()),
                // Every 50th account is disabled, so imports see both states.
                account_enabled: i % 50 != 49,
                user_type: "Member".into(),
                seq: 0,
            };
            data.insert_user(user);
            ids.push(id);
        }
        // Two groups, one nested in the other, so transitiveMembers differs from members.
        let outer_id = seeded_uuid(&mut rng);
        let inner_id = seeded_uuid(&mut rng);
        let mut outer: Vec<Member> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(_, id)| Member::User(id.clone()))
            .collect();
        outer.push(Member::Group(inner_id.clone()));
        let inner: Vec<Member> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 == 0)
            .map(|(_, id)| Member::User(id.clone()))
            .collect();
        data.groups.insert(
            outer_id.clone(),
            SimGroup {
                id: outer_id,
                display_name: "Keyward Pilot".into(),
                members: outer,
            },
        );
        data.groups.insert(
            inner_id.clone(),
            SimGroup {
                id: inner_id,
                display_name: "Keyward Pilot - Nested".into(),
                members: inner,
            },
        );
        data
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn insert_user(&mut self, mut user: SimUser) {
        user.seq = self.next_seq();
        self.upn_index
            .insert(user.user_principal_name.to_lowercase(), user.id.clone());
        self.users.insert(user.id.clone(), user);
    }

    /// Finds a user by object id or UPN, the two forms Graph accepts in a path.
    pub fn find_user(&self, key: &str) -> Option<&SimUser> {
        let key = key.trim_start_matches("('").trim_end_matches("')");
        self.users.get(key).or_else(|| {
            self.upn_index
                .get(&key.to_lowercase())
                .and_then(|id| self.users.get(id))
        })
    }

    pub fn remove_user(&mut self, id: &str) -> bool {
        let Some(user) = self.users.remove(id) else {
            return false;
        };
        self.upn_index
            .remove(&user.user_principal_name.to_lowercase());
        self.methods.remove(id);
        self.taps.remove(id);
        let seq = self.next_seq();
        self.tombstones.push((seq, user.id));
        for group in self.groups.values_mut() {
            group.members.retain(|m| m != &Member::User(id.to_string()));
        }
        true
    }

    /// All users reachable from a group through nested groups, in id order.
    pub fn transitive_users(&self, group_id: &str) -> Option<std::collections::BTreeSet<String>> {
        self.groups.get(group_id)?;
        let mut out = std::collections::BTreeSet::new();
        let mut seen = HashSet::new();
        let mut stack = vec![group_id.to_string()];
        while let Some(g) = stack.pop() {
            if !seen.insert(g.clone()) {
                continue;
            }
            if let Some(group) = self.groups.get(&g) {
                for m in &group.members {
                    match m {
                        Member::User(u) => {
                            out.insert(u.clone());
                        }
                        Member::Group(inner) => stack.push(inner.clone()),
                    }
                }
            }
        }
        Some(out)
    }

    /// Whether the FIDO2 policy targets this user (include minus exclude, groups resolved transitively).
    pub fn user_in_policy_scope(&self, user_id: &str) -> bool {
        let hit = |targets: &[PolicyTarget]| {
            targets.iter().any(|t| {
                t.id == "all_users"
                    || t.id == user_id
                    || self
                        .transitive_users(&t.id)
                        .is_some_and(|set| set.contains(user_id))
            })
        };
        hit(&self.policy.include_targets) && !hit(&self.policy.exclude_targets)
    }

    /// Spends `cost` resource units of the 10-second budget. Ok(fraction of the limit now used),
    /// or Err(seconds to wait) when the budget is exhausted.
    pub fn spend_units(&mut self, now: Instant, cost: u32) -> Result<f64, u64> {
        const WINDOW: Duration = Duration::from_secs(10);
        while let Some((t, c)) = self.reads.front().copied()
            && now.duration_since(t) >= WINDOW
        {
            self.reads.pop_front();
            self.read_units -= c;
        }
        if self.read_units + cost > self.read_limit {
            let oldest = self.reads.front().map_or(now, |(t, _)| *t);
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        self.reads.push_back((now, cost));
        self.read_units += cost;
        Ok(f64::from(self.read_units) / f64::from(self.read_limit.max(1)))
    }

    /// Records a write against the app+tenant write budget; returns the seconds to wait if over it.
    pub fn spend_write(&mut self, now: Instant) -> Option<u64> {
        while self
            .writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.write_window)
        {
            self.writes.pop_front();
        }
        if self.writes.len() as u64 >= u64::from(self.write_limit) {
            let oldest = self.writes.front().copied().unwrap_or(now);
            let wait = self.write_window.saturating_sub(now.duration_since(oldest));
            return Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        self.writes.push_back(now);
        None
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Simulator {
        let data = Data::new(&config);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut key = [0u8; 32];
        aws_lc_rs::rand::SecureRandom::fill(&rng, &mut key)
            .expect("invariant: the system RNG works");
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key)
            .expect("invariant: a 32-byte key fits AES-256-GCM");
        Simulator {
            inner: Arc::new(Inner {
                config,
                data: Mutex::new(data),
                challenge_key: aws_lc_rs::aead::LessSafeKey::new(unbound),
            }),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// Locks the tenant. A poisoned lock only means a handler panicked mid-request; the data is
    /// still consistent for a simulator, so carry on.
    pub(crate) fn data(&self) -> MutexGuard<'_, Data> {
        self.inner.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

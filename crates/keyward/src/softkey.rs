//! `keyward softkey`: one persistent virtual security key served over the UDP HID transport.
//!
//! The same engine as the server's (`keyward-authenticator`) answers CTAP2 requests; this module
//! supplies what the engine asks of its host: a state file as the [`Store`](state::FileStore),
//! a file key as the [`KeyProtection`](crypt::SoftProtection), presence (`--presence`), and the
//! real clock and RNG. Starting the process is a power-up: volatile state is fresh and the
//! three-wrong-PINs block is lifted.

mod crypt;
mod journal;
mod state;
mod transport;

#[cfg(test)]
mod tests;

use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keyward_authenticator::memory::SystemEnv;
use keyward_authenticator::{
    Attestation, AttestationKey, Authenticator, Config, Context, Env as _, Policy, Presence,
    PresenceRequest, attestation,
};
use keyward_ctap::status::StatusCode;
use zeroize::Zeroizing;

use crypt::{FileKey, SoftProtection};
use state::{FileStore, KeySource, StateFile, StoredAttestation, StoredKeyState};
use transport::{Handler, Signals};

/// The environment variable holding the state file's passphrase.
pub const PASSPHRASE_ENV: &str = "KEYWARD_SOFTKEY_PASSPHRASE";
/// The organisation named in the softkey's own attestation certificates.
const ATTESTATION_ORGANISATION: &str = "Keyward softkey";
const KEY_CHECK_BINDING: &[u8] = b"key-check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"keyward softkey state v1";
const CA_KEY_BINDING: &[u8] = b"attestation-ca";
const BATCH_KEY_BINDING: &[u8] = b"attestation-batch";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PresenceMode {
    /// Every request for user presence is confirmed, as if the user touched the key.
    Auto,
    /// Every request for user presence is refused (CTAP2_ERR_OPERATION_DENIED).
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttestationMode {
    /// Basic attestation with the softkey's own batch certificate.
    Packed,
    /// No attestation statement.
    None,
}

/// Serve one persistent virtual security key over the UDP HID transport.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to bind; each datagram is one 64-byte HID report, replies go to the sender.
    #[arg(long, value_name = "HOST:PORT")]
    pub udp: SocketAddr,
    /// The key's state file, created on first start. Keys in it are encrypted with a passphrase
    /// from KEYWARD_SOFTKEY_PASSPHRASE, or else with a key file created beside it (`PATH.key`).
    #[arg(long, value_name = "PATH")]
    pub state: PathBuf,
    /// How requests for user presence are answered.
    #[arg(long, value_enum, default_value_t = PresenceMode::Auto)]
    pub presence: PresenceMode,
    /// AAGUID of a new key as 32 hex digits (default: random). Must match an existing state file.
    #[arg(long, value_name = "HEX")]
    pub aaguid: Option<String>,
    /// Attestation of new credentials.
    #[arg(long, value_enum, default_value_t = AttestationMode::Packed)]
    pub attestation: AttestationMode,
    /// Write the softkey's attestation CA certificate (PEM) to this path, for verifiers to trust.
    #[arg(long, value_name = "PATH")]
    pub attestation_ca_out: Option<PathBuf>,
    /// Milliseconds that `auto` presence takes to "touch", during which KEEPALIVE says UPNEEDED
    /// and CANCEL is honoured (for tests of those paths).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub presence_delay_ms: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Logs go to stderr so that stdout carries only the ready line.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let passphrase = std::env::var_os(PASSPHRASE_ENV)
        .filter(|p| !p.is_empty())
        .map(|p| Zeroizing::new(p.into_encoded_bytes()));
    let key = SoftKey::open(&args, passphrase.as_deref().map(Vec::as_slice))?;
    if let Some(out) = &args.attestation_ca_out {
        fs::write(out, &key.ca_pem).with_context(|| format!("writing {}", out.display()))?;
        tracing::info!(path = %out.display(), "attestation CA certificate written");
    }
    let socket = UdpSocket::bind(args.udp).with_context(|| format!("binding {}", args.udp))?;
    let local = socket.local_addr()?;
    tracing::info!(
        state = %args.state.display(),
        aaguid = %hex::encode(key.engine.config().aaguid),
        credentials = key.store.state().credentials.len(),
        presence = ?args.presence,
        "softkey ready"
    );
    println!("keyward softkey listening on {local}");
    std::io::stdout().flush()?;
    let signals = key.signals();
    transport::serve(socket, key, signals)?;
    Ok(())
}

/// Presence as `--presence` says, honouring CANCEL while it "waits for the touch".
struct SoftPresence {
    mode: PresenceMode,
    delay: Duration,
    signals: Arc<Signals>,
}

impl Presence for SoftPresence {
    fn confirm(&mut self, request: &PresenceRequest) -> Result<(), StatusCode> {
        // Debug, not info: the request line that follows says how it ended, and one log write per
        // request is enough on the assertion path.
        tracing::debug!(kind = ?request.kind, rp_id = request.rp_id.as_deref().unwrap_or(""), mode = ?self.mode, "user presence requested");
        if self.mode == PresenceMode::Deny {
            return Err(StatusCode::OperationDenied);
        }
        self.signals.up_needed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.delay;
        let outcome = loop {
            if self.signals.cancel.load(Ordering::SeqCst) {
                break Err(StatusCode::KeepaliveCancel);
            }
            let now = Instant::now();
            if now >= deadline {
                break Ok(());
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        };
        self.signals.up_needed.store(false, Ordering::SeqCst);
        outcome
    }
}

/// One opened virtual key: the engine and everything it runs against.
struct SoftKey {
    engine: Authenticator,
    store: FileStore,
    protection: SoftProtection,
    presence: SoftPresence,
    env: SystemEnv,
    ca_pem: String,
    pacing: Pacing,
}

/// When the next counter's disk write starts (see `FileStore::start_reservation`).
///
/// Starting it before the answer is sent lets the device write while the answer travels, which
/// helps a host that sends its next request at once (that request would otherwise wait behind
/// the write), but delays this answer by the cost of starting a write. So the key starts it
/// early only for a host that comes back quickly: when the last request arrived sooner after
/// the last reservation was on disk than that reservation took (a request that was already
/// waiting counts as arriving at once). A host that pauses between requests, as a person does,
/// gets its answer first and the write after.
#[derive(Debug, Default)]
struct Pacing {
    /// When the last reservation was on disk.
    written_at: Option<Instant>,
    /// How long after its answer that reservation took to be on disk.
    last_write: Duration,
    /// From `written_at` to the request after it.
    turnaround: Option<Duration>,
}

impl Pacing {
    /// A request is being handled.
    fn request(&mut self, now: Instant) {
        if let Some(written_at) = self.written_at.take() {
            self.turnaround = Some(now.saturating_duration_since(written_at));
        }
    }

    fn start_early(&self) -> bool {
        self.turnaround.is_some_and(|t| t < self.last_write)
    }

    /// An answer has left at `answered_at`; `written_at` when the reservation made after it was
    /// on disk, if one was made.
    fn answered(&mut self, answered_at: Instant, written_at: Option<Instant>) {
        if let Some(written_at) = written_at {
            self.last_write = written_at.saturating_duration_since(answered_at);
            self.written_at = Some(written_at);
        }
    }
}

impl Handler for SoftKey {
    fn handle(&mut self, request: &[u8]) -> Vec<u8> {
        self.pacing.request(Instant::now());
        let mut ctx = Context {
            store: &mut self.store,
            protection: &self.protection,
            presence: &mut self.presence,
            env: &mut self.env,
            policy: Policy::default(),
        };
        let response = self.engine.process(&mut ctx, request);
        if self.pacing.start_early() {
            // Finished once the answer has left (`answered`).
            self.store.start_reservation();
        }
        response
    }

    fn answered(&mut self) {
        let answered_at = Instant::now();
        let wrote = self.store.reserve_next_count();
        self.pacing.answered(answered_at, wrote.then(Instant::now));
    }

    fn may_wait(&self) -> bool {
        self.presence.mode == PresenceMode::Auto && !self.presence.delay.is_zero()
    }
}

impl SoftKey {
    /// Opens the state file (creating it on first start) and powers the key up.
    fn open(args: &Args, passphrase: Option<&[u8]>) -> anyhow::Result<Self> {
        let requested_aaguid = args.aaguid.as_deref().map(parse_aaguid).transpose()?;
        let (mut store, protection) = if args.state.exists() {
            open_existing(&args.state, passphrase, requested_aaguid)?
        } else {
            create(&args.state, passphrase, requested_aaguid)?
        };
        if store.state().attestation.is_none() {
            let generated = generate_attestation(&protection, store.state().aaguid()?)?;
            store
                .set_attestation(generated)
                .context("saving the attestation keys")?;
        }
        // Start-up folds the counter journal into the state file and starts an empty one.
        store
            .compact()
            .with_context(|| format!("compacting {}", args.state.display()))?;
        store
            .power_cycle()
            .context("resetting the PIN block at power-up")?;
        let stored = store
            .state()
            .attestation
            .clone()
            .context("attestation keys missing")?;
        let aaguid = store.state().aaguid()?;
        let mut config = Config::new(aaguid);
        if args.attestation == AttestationMode::Packed {
            let pkcs8_der = protection
                .open_bound(BATCH_KEY_BINDING, &stored.batch_key_sealed)
                .map_err(|_| {
                    anyhow::anyhow!("the attestation key in the state file does not open")
                })?;
            config.attestation = Attestation::Packed(AttestationKey {
                cert_chain_der: vec![stored.batch_cert_der.clone()],
                pkcs8_der,
            });
        }
        let mut env = SystemEnv::new();
        let engine = Authenticator::new(config, &mut env);
        let signals = Arc::new(Signals::default());
        Ok(Self {
            engine,
            store,
            protection,
            presence: SoftPresence {
                mode: args.presence,
                delay: Duration::from_millis(args.presence_delay_ms),
                signals,
            },
            env,
            ca_pem: stored.ca_cert_pem,
            pacing: Pacing::default(),
        })
    }

    /// The signals shared with the transport: its CANCEL reaches this key's presence check.
    fn signals(&self) -> Arc<Signals> {
        Arc::clone(&self.presence.signals)
    }
}

fn parse_aaguid(text: &str) -> anyhow::Result<[u8; 16]> {
    let bytes = hex::decode(text.replace('-', "")).context("--aaguid must be hexadecimal")?;
    <[u8; 16]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("--aaguid must be 16 bytes (32 hex digits)"))
}

/// `<state>.key`, beside the state file.
fn key_file_path(state: &Path) -> PathBuf {
    let mut name = state
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".key");
    state.with_file_name(name)
}

fn read_key_file(path: &Path) -> anyhow::Result<FileKey> {
    let mut file =
        fs::File::open(path).with_context(|| format!("opening the key file {}", path.display()))?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the key file is readable by other users; it should be mode 0600");
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)?;
    let key = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("the key file {} is not 32 bytes", path.display()))?;
    Ok(FileKey::from_bytes(key))
}

fn create_key_file(path: &Path) -> anyhow::Result<FileKey> {
    let key = FileKey::generate()?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the key file {}", path.display()))?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    fs::File::open(state::parent_dir(path))?.sync_all()?;
    Ok(key)
}

fn open_existing(
    path: &Path,
    passphrase: Option<&[u8]>,
    requested_aaguid: Option<[u8; 16]>,
) -> anyhow::Result<(FileStore, SoftProtection)> {
    let store = FileStore::load(path)?;
    let file = store.state();
    let key = match (&file.key_source, passphrase) {
        (KeySource::Passphrase { salt, iterations }, Some(p)) => {
            FileKey::from_passphrase(p, salt, *iterations)?
        }
        (KeySource::Passphrase { .. }, None) => {
            bail!(
                "{} is protected by a passphrase: set {PASSPHRASE_ENV}",
                path.display()
            )
        }
        (KeySource::KeyFile, Some(_)) => bail!(
            "{} is protected by the key file {}, not a passphrase: unset {PASSPHRASE_ENV}",
            path.display(),
            key_file_path(path).display()
        ),
        (KeySource::KeyFile, None) => read_key_file(&key_file_path(path))?,
    };
    let protection = SoftProtection::new(&key)?;
    match protection.open_bound(KEY_CHECK_BINDING, &file.key_check) {
        Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => {}
        _ => bail!(
            "the passphrase or key file does not open {}",
            path.display()
        ),
    }
    if let Some(aaguid) = requested_aaguid
        && aaguid != file.aaguid()?
    {
        bail!(
            "{} belongs to a key with AAGUID {}; --aaguid cannot change it",
            path.display(),
            hex::encode(&file.aaguid)
        );
    }
    Ok((store, protection))
}

fn create(
    path: &Path,
    passphrase: Option<&[u8]>,
    requested_aaguid: Option<[u8; 16]>,
) -> anyhow::Result<(FileStore, SoftProtection)> {
    let mut env = SystemEnv::new();
    let (key_source, key) = match passphrase {
        Some(p) => {
            let mut salt = vec![0u8; 16];
            env.fill_random(&mut salt);
            let key = FileKey::from_passphrase(p, &salt, crypt::PBKDF2_ITERATIONS)?;
            (
                KeySource::Passphrase {
                    salt,
                    iterations: crypt::PBKDF2_ITERATIONS,
                },
                key,
            )
        }
        None => {
            let key_path = key_file_path(path);
            // A key file left without its state (the state was deleted) is reused rather than
            // overwritten: it may still protect a backup of that state.
            let key = if key_path.exists() {
                read_key_file(&key_path)?
            } else {
                create_key_file(&key_path)?
            };
            (KeySource::KeyFile, key)
        }
    };
    let protection = SoftProtection::new(&key)?;
    let aaguid = requested_aaguid.unwrap_or_else(|| {
        let mut a = [0u8; 16];
        env.fill_random(&mut a);
        a
    });
    let key_check = protection
        .seal_bound(KEY_CHECK_BINDING, KEY_CHECK_PLAINTEXT)
        .map_err(|e| anyhow::anyhow!("sealing the key check: {e}"))?;
    let file = StateFile {
        version: state::STATE_VERSION,
        aaguid: aaguid.to_vec(),
        key_source,
        key_check,
        attestation: None,
        key_state: StoredKeyState::from(&keyward_authenticator::KeyState::default()),
        credentials: Vec::new(),
        journal: None,
    };
    let mut store = FileStore::new(path.to_path_buf(), file);
    store
        .persist()
        .with_context(|| format!("creating {}", path.display()))?;
    tracing::info!(state = %path.display(), aaguid = %hex::encode(aaguid), "created a new security key");
    Ok((store, protection))
}

fn generate_attestation(
    protection: &SoftProtection,
    aaguid: [u8; 16],
) -> anyhow::Result<StoredAttestation> {
    let ca = attestation::generate_ca(ATTESTATION_ORGANISATION)
        .context("generating the attestation CA")?;
    let batch = attestation::issue_batch_certificate(&ca, aaguid, ATTESTATION_ORGANISATION)
        .context("issuing the batch attestation certificate")?;
    let batch_cert_der = batch
        .cert_chain_der
        .first()
        .cloned()
        .context("empty attestation chain")?;
    let seal = |binding: &[u8], der: &[u8]| {
        protection
            .seal_bound(binding, der)
            .map_err(|e| anyhow::anyhow!("sealing an attestation key: {e}"))
    };
    Ok(StoredAttestation {
        ca_cert_der: ca.cert_der.clone(),
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_sealed: seal(CA_KEY_BINDING, &ca.pkcs8_der)?,
        batch_cert_der,
        batch_key_sealed: seal(BATCH_KEY_BINDING, &batch.pkcs8_der)?,
    })
}

//! Signed checkpoints: the log's tree size and root at one moment, signed with the log's
//! Ed25519 key, in the text form of C2SP `tlog-checkpoint` inside a C2SP `signed-note`, so
//! an examiner can check one with any tool that reads those (Go's `sumdb/note`, sigsum,
//! transparency-dev) as well as with `portcullis audit verify`.
//!
//! # Format
//!
//! A checkpoint is UTF-8 text, no control characters but `\n`, at most 64 KiB:
//!
//! ```text
//! portcullis.example/audit                                       origin (= the key's name)
//! 1000                                                           tree size, decimal, no leading zeros
//! 3bK5Fv0Gk2p8Mfm1b3G6J1mW7Jc4U2wK0k3R8q1Y4zA=                   root hash, standard base64 (RFC 4648 §4, padded) of 32 bytes
//! time 2026-12-01T14:00:00Z                                      extension line: when it was cut, RFC 3339 UTC, whole seconds
//!                                                                blank line
//! — portcullis.example/audit Ab3x…(base64 of 68 bytes)…==        signature line(s)
//! ```
//!
//! - The *body* is the lines before the blank line, each ending in `\n` (the last one
//!   included). Its first three lines are origin, size and root; any further lines are
//!   extension lines (non-empty). We write exactly one, `time <RFC 3339>`, and keep others
//!   we read (they are signed too).
//! - Each signature line is `U+2014 EM DASH`, space, key name, space, base64 of
//!   `key id (4 bytes) || Ed25519 signature (64 bytes)` over the body bytes, then `\n`.
//! - key id = the first 4 bytes of `SHA-256(key name || 0x0A || 0x01 || public key)`
//!   (0x01 is signed-note's Ed25519 signature type).
//! - The root is the RFC 6962 root of the first *size* records (see [`crate::merkle`]).
//!
//! A file of checkpoints (`<log>/checkpoints`, a file witness) is one note after another,
//! each followed by a blank line.
//!
//! Checking one by hand, with OpenSSL: the body is everything before the last blank line
//! plus its `\n`; the signature is the base64 after the key name with its first 4 bytes
//! dropped; then `openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in body -sigfile sig`
//! (`pub.pem` from `openssl pkey -in key.pem -pubout`).
//!
//! # Keys
//!
//! - Private key: an Ed25519 key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as
//!   `openssl genpkey -algorithm ed25519 -out key.pem` or [`generate_key_file`] write.
//! - Public key, primary form: the signed-note *verifier key*, one line
//!   `<name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte public key)>`, given literally or
//!   in a file. An SPKI PEM file (`openssl pkey -in key.pem -pubout`) is accepted too; it
//!   carries no name, so it accepts a signature line of any name whose key id matches.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Larger notes are refused before they are looked at.
pub const MAX_NOTE_BYTES: usize = 64 << 10;
/// As Go's `sumdb/note`: a note with more signature lines is refused.
pub const MAX_SIGNATURES: usize = 100;
/// The origin (and key name) when the deployment names none.
pub const DEFAULT_ORIGIN: &str = "portcullis/audit";

const SIG_PREFIX: &str = "\u{2014} ";
const ED25519: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is {len} bytes, more than the {MAX_NOTE_BYTES} allowed")]
    TooLarge { len: usize },
    #[error("checkpoint is not UTF-8")]
    NotUtf8,
    #[error("checkpoint has a control character at byte {offset}")]
    ControlChar { offset: usize },
    #[error("checkpoint has no blank line before its signatures")]
    Unsigned,
    #[error("checkpoint line {line}: {what}")]
    Body { line: usize, what: &'static str },
    #[error("checkpoint signature line {line}: {what}")]
    SignatureLine { line: usize, what: &'static str },
    #[error("checkpoint has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("checkpoint is not signed by key {want} (signed by: {})", .signers.join(", "))]
    NotSignedByKey { want: String, signers: Vec<String> },
    #[error("checkpoint's signature by {name} does not verify: it was altered or forged")]
    BadSignature { name: String },
    #[error("key name {0:?} is not usable: it must be non-empty and have no spaces or '+'")]
    KeyName(String),
    #[error("key {path}: {source}")]
    KeyIo { path: PathBuf, source: io::Error },
    #[error("key {path}: {what}")]
    KeyFormat { path: PathBuf, what: String },
    #[error("public key {0:?} is neither a verifier key (name+id+key) nor a readable key file")]
    Vkey(String),
}

/// What a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Unix seconds from the `time` extension line, when there is one.
    pub time: Option<u64>,
    /// Extension lines other than `time`, in order.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The signed text: origin, size, root, extension lines, each ending in `\n`.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        if let Some(t) = self.time {
            s.push_str("time ");
            s.push_str(&crate::time::format(t));
            s.push('\n');
        }
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// The time as RFC 3339, or `-` when the checkpoint has none.
    pub fn time_text(&self) -> String {
        self.time.map_or_else(|| "-".into(), crate::time::format)
    }

    pub fn root_b64(&self) -> String {
        B64.encode(self.root)
    }

    fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        // `body` ends in '\n' (checked by the caller), so the last split piece is empty.
        let lines: Vec<&str> = body.split('\n').collect();
        let lines = &lines[..lines.len().saturating_sub(1)];
        let bad = |line: usize, what| CheckpointError::Body { line, what };
        let [origin, size, root, ext @ ..] = lines else {
            return Err(bad(
                lines.len() + 1,
                "a checkpoint needs origin, size and root lines",
            ));
        };
        if origin.is_empty() {
            return Err(bad(1, "the origin is empty"));
        }
        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size.len() == 1 || !size.starts_with('0'));
        let size = canonical
            .then(|| size.parse::<u64>().ok())
            .flatten()
            .ok_or(bad(
                2,
                "the tree size is not a decimal number without leading zeros",
            ))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or(bad(3, "the root is not the base64 of 32 bytes"))?;
        let mut time = None;
        let mut extensions = Vec::new();
        for (i, e) in ext.iter().enumerate() {
            if e.is_empty() {
                return Err(bad(i + 4, "an extension line is empty"));
            }
            match e.strip_prefix("time ") {
                Some(t) if time.is_none() => {
                    time = Some(crate::time::parse(t).ok_or(bad(
                        i + 4,
                        "the time is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)",
                    ))?);
                }
                Some(_) => return Err(bad(i + 4, "a second time line")),
                None => extensions.push((*e).to_owned()),
            }
        }
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
            time,
            extensions,
        })
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    /// The signature proper (64 bytes for Ed25519).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// `name+keyid`, how reports name a signer.
    pub fn signer(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.key_id))
    }
}

/// A checkpoint with its signatures, as read or as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The signed bytes exactly as they were read.
    pub body: String,
    pub signatures: Vec<NoteSignature>,
}

impl SignedCheckpoint {
    /// Parses one signed note. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(CheckpointError::TooLarge { len: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| CheckpointError::NotUtf8)?;
        if let Some(offset) = text.bytes().position(|b| b < 0x20 && b != b'\n') {
            return Err(CheckpointError::ControlChar { offset });
        }
        // As signed-note says: the signatures follow the last blank line.
        let split = text.rfind("\n\n").ok_or(CheckpointError::Unsigned)?;
        let (body, sigs) = (&text[..split + 1], &text[split + 2..]);
        let checkpoint = Checkpoint::parse_body(body)?;
        let first_sig_line = body.matches('\n').count() + 2;
        let mut signatures = Vec::new();
        if sigs.is_empty() {
            return Err(CheckpointError::Unsigned);
        }
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(CheckpointError::SignatureLine {
                line: first_sig_line + sigs.matches('\n').count(),
                what: "the last signature line does not end in a newline",
            });
        };
        for (i, line) in sigs.split('\n').enumerate() {
            let bad = |what| CheckpointError::SignatureLine {
                line: first_sig_line + i,
                what,
            };
            if signatures.len() == MAX_SIGNATURES {
                return Err(CheckpointError::TooManySignatures);
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(bad("it does not start with an em dash and a space"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(bad("it needs a key name, a space and a signature"))?;
            check_name(name).map_err(|_| bad("the key name is empty or has spaces or '+'"))?;
            let raw = B64
                .decode(b64)
                .map_err(|_| bad("the signature is not standard base64"))?;
            if raw.len() < 5 {
                return Err(bad("the signature is too short"));
            }
            let (id, sig) = raw.split_at(4);
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id: [id[0], id[1], id[2], id[3]],
                signature: sig.to_vec(),
            });
        }
        Ok(Self {
            checkpoint,
            body: body.to_owned(),
            signatures,
        })
    }

    /// The note as text: body, blank line, signature lines.
    pub fn to_text(&self) -> String {
        let mut s = self.body.clone();
        s.push('\n');
        for sig in &self.signatures {
            let mut raw = sig.key_id.to_vec();
            raw.extend_from_slice(&sig.signature);
            s.push_str(SIG_PREFIX);
            s.push_str(&sig.name);
            s.push(' ');
            s.push_str(&B64.encode(raw));
            s.push('\n');
        }
        s
    }

    /// Checks the signature of `key`. As signed-note says, the first line naming the key
    /// decides: a bad one is never saved by another line.
    pub fn verify(&self, key: &VerifierKey) -> Result<(), CheckpointError> {
        let Some(sig) = self.signatures.iter().find(|s| key.matches(s)) else {
            return Err(CheckpointError::NotSignedByKey {
                want: key.describe(),
                signers: self.signatures.iter().map(NoteSignature::signer).collect(),
            });
        };
        let bad = || CheckpointError::BadSignature { name: sig.signer() };
        let sig_bytes: [u8; 64] = sig.signature.as_slice().try_into().map_err(|_| bad())?;
        key.key
            .verify_strict(self.body.as_bytes(), &Signature::from_bytes(&sig_bytes))
            .map_err(|_| bad())
    }
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(CheckpointError::KeyName(name.to_owned()));
    }
    Ok(())
}

/// signed-note's key id for an Ed25519 key of this name.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The log's signing key and the name its signature lines carry.
pub struct LogSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key, even in a debug dump.
        f.debug_struct("LogSigner")
            .field("vkey", &self.verifier().to_string())
            .finish()
    }
}

impl LogSigner {
    pub fn new(name: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads a PKCS#8 PEM private key file (see the module doc).
    pub fn load(path: &Path, name: &str) -> Result<Self, CheckpointError> {
        Self::new(name, load_signing_key(path)?)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: Some(self.name.clone()),
            key: self.key.verifying_key(),
        }
    }

    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let body = checkpoint.body();
        let sig = self.key.sign(body.as_bytes());
        SignedCheckpoint {
            signatures: vec![NoteSignature {
                name: self.name.clone(),
                key_id: key_id(&self.name, &self.key.verifying_key()),
                signature: sig.to_bytes().to_vec(),
            }],
            checkpoint,
            body,
        }
    }
}

/// Reads an Ed25519 private key in PKCS#8 PEM.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, CheckpointError> {
    let text = fs::read_to_string(path).map_err(|source| CheckpointError::KeyIo {
        path: path.to_owned(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| CheckpointError::KeyFormat {
        path: path.to_owned(),
        what: format!("not an Ed25519 private key in PKCS#8 PEM ({e})"),
    })
}

/// Writes a new Ed25519 private key to `path` in PKCS#8 PEM, readable by its owner only.
/// Refuses to replace an existing file: losing the old key would orphan the log's
/// checkpoints.
pub fn generate_key_file(path: &Path) -> Result<VerifyingKey, CheckpointError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| CheckpointError::KeyFormat {
            path: path.to_owned(),
            what: format!("cannot encode the key ({e})"),
        })?;
    let io = |source| CheckpointError::KeyIo {
        path: path.to_owned(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(pem.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(key.verifying_key())
}

/// `portcullis audit keygen --out FILE`: a new private key in `out` and the verifier key
/// line to hand to auditors (`name` is the log's origin). The name is checked before
/// anything is written.
pub fn keygen(out: &Path, name: &str) -> Result<VerifierKey, CheckpointError> {
    check_name(name)?;
    let key = generate_key_file(out)?;
    Ok(VerifierKey {
        name: Some(name.to_owned()),
        key,
    })
}

/// A public key to check checkpoints with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key's name; `None` for a key read from SPKI PEM, which has none.
    pub name: Option<String>,
    pub key: VerifyingKey,
}

impl VerifierKey {
    /// Parses a one-line verifier key `<name>+<hex key id>+<base64(0x01 || key)>`.
    pub fn parse_vkey(s: &str) -> Result<Self, CheckpointError> {
        let bad = || CheckpointError::Vkey(s.to_owned());
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        check_name(name).map_err(|_| bad())?;
        let raw = B64.decode(key).map_err(|_| bad())?;
        let [ED25519, key @ ..] = raw.as_slice() else {
            return Err(bad());
        };
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
        // The id is redundant; a wrong one means a mangled or hand-edited key.
        if !id.eq_ignore_ascii_case(&hex::encode(key_id(name, &key))) {
            return Err(bad());
        }
        Ok(Self {
            name: Some(name.to_owned()),
            key,
        })
    }

    /// What `verify --public-key` takes: a verifier key given literally, or a file holding
    /// one, or a file holding an SPKI PEM public key.
    pub fn load(arg: &str) -> Result<Self, CheckpointError> {
        if let Ok(k) = Self::parse_vkey(arg) {
            return Ok(k);
        }
        let path = Path::new(arg);
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CheckpointError::Vkey(arg.to_owned()));
            }
            Err(source) => {
                return Err(CheckpointError::KeyIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let format = |what: &str| CheckpointError::KeyFormat {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        if text.contains("PRIVATE KEY") {
            return Err(format(
                "this is a private key; verify with the public key `portcullis audit public-key` prints",
            ));
        }
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            let key = VerifyingKey::from_public_key_pem(&text)
                .map_err(|e| format(&format!("not an Ed25519 public key in SPKI PEM ({e})")))?;
            return Ok(Self { name: None, key });
        }
        Self::parse_vkey(&text)
            .map_err(|_| format("not a verifier key (name+id+key) nor an SPKI PEM public key"))
    }

    fn matches(&self, sig: &NoteSignature) -> bool {
        self.name.as_ref().is_none_or(|n| *n == sig.name)
            && key_id(&sig.name, &self.key) == sig.key_id
    }

    /// How reports name this key: the verifier key, or the hex key for an unnamed one.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(_) => self.to_string(),
            None => format!("(any name)+{}", hex::encode(self.key.as_bytes())),
        }
    }
}

impl std::fmt::Display for VerifierKey {
    /// The one-line verifier key; an unnamed key is shown under [`DEFAULT_ORIGIN`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name.as_deref().unwrap_or(DEFAULT_ORIGIN);
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{name}+{}+{}",
            hex::encode(key_id(name, &self.key)),
            B64.encode(raw)
        )
    }
}

/// What `portcullis audit public-key --key FILE` prints: the verifier key line.
pub fn public_key_line(key_file: &Path, name: &str) -> Result<String, CheckpointError> {
    Ok(LogSigner::load(key_file, name)?.verifier().to_string())
}

/// One note found in a file of notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteChunk<'a> {
    /// 1-based line of the note's first line in the file.
    pub line: usize,
    pub bytes: &'a [u8],
}

/// Cuts a file of notes (each body, blank line, signature lines, optionally a blank line)
/// into notes, without judging them: [`SignedCheckpoint::parse`] does that. A note cut short
/// at the end of the file comes back as it is, and fails to parse.
pub fn split_notes(text: &[u8]) -> Vec<NoteChunk<'_>> {
    #[derive(PartialEq)]
    enum State {
        Between,
        Body,
        Signatures,
    }
    let mut out = Vec::new();
    let mut state = State::Between;
    let (mut start, mut start_line) = (0, 0);
    let mut pos = 0;
    let mut line_no = 0;
    while pos < text.len() {
        line_no += 1;
        let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i + 1);
        let line = &text[pos..end];
        let blank = line == b"\n";
        let sig = line.starts_with(SIG_PREFIX.as_bytes());
        match state {
            State::Between if blank => {}
            State::Between => {
                (start, start_line) = (pos, line_no);
                state = State::Body;
            }
            State::Body if blank => state = State::Signatures,
            State::Body => {}
            State::Signatures if sig => {}
            State::Signatures => {
                out.push(NoteChunk {
                    line: start_line,
                    bytes: &text[start..pos],
                });
                if blank {
                    state = State::Between;
                } else {
                    (start, start_line) = (pos, line_no);
                    state = State::Body;
                }
            }
        }
        pos = end;
    }
    if state != State::Between {
        out.push(NoteChunk {
            line: start_line,
            bytes: &text[start..],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> LogSigner {
        LogSigner::new("example.com/log", SigningKey::from_bytes(&[7; 32])).unwrap()
    }

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            origin: "example.com/log".into(),
            size,
            root: [size as u8; 32],
            time: Some(1_796_133_600),
            extensions: vec![],
        }
    }

    #[test]
    fn a_signed_checkpoint_reads_back_and_verifies() {
        let s = signer();
        let signed = s.sign(checkpoint(1000));
        let text = signed.to_text();
        assert!(text.starts_with(
            "example.com/log\n1000\n6Ojo6Ojo6Ojo6Ojo6Ojo6Ojo6Ojo6Ojo6Ojo6Ojo6Og=\ntime 2026-12-01T14:00:00Z\n\n\u{2014} example.com/log "
        ), "{text}");
        let back = SignedCheckpoint::parse(text.as_bytes()).unwrap();
        assert_eq!(back, signed);
        back.verify(&s.verifier()).unwrap();
        let vkey = s.verifier().to_string();
        assert_eq!(VerifierKey::parse_vkey(&vkey).unwrap(), s.verifier());
    }

    #[test]
    fn a_changed_body_or_another_key_fails() {
        let s = signer();
        let text = s
            .sign(checkpoint(1000))
            .to_text()
            .replace("\n1000\n", "\n1001\n");
        let back = SignedCheckpoint::parse(text.as_bytes()).unwrap();
        assert!(matches!(
            back.verify(&s.verifier()),
            Err(CheckpointError::BadSignature { .. })
        ));
        let other = LogSigner::new("example.com/log", SigningKey::from_bytes(&[8; 32])).unwrap();
        let forged = other.sign(checkpoint(1000));
        assert!(matches!(
            forged.verify(&s.verifier()),
            Err(CheckpointError::NotSignedByKey { .. })
        ));
        // An unnamed key (SPKI) still requires the key id to match.
        let unnamed = VerifierKey {
            name: None,
            key: s.verifier().key,
        };
        assert!(forged.verify(&unnamed).is_err());
        s.sign(checkpoint(3)).verify(&unnamed).unwrap();
    }

    #[test]
    fn malformed_checkpoints_are_refused_with_a_reason() {
        let good = signer().sign(checkpoint(5)).to_text();
        let cases: Vec<(String, &str)> = vec![
            (good.replace("\n5\n", "\n05\n"), "leading zeros"),
            (good.replace("\n5\n", "\n-5\n"), "leading zeros"),
            (good.replace("time 2026", "time 1926"), "RFC 3339"),
            (good.replace("\n\n", "\n\n\n"), "empty"),
            (good.replace("\n\u{2014} ", "\n- "), "em dash"),
            (good.replace("BQUF", "!!!!"), "base64"),
            (good.trim_end().to_owned(), "newline"),
            (good.replace("\n\n", "\n"), "blank line"),
            (good.replace("example.com/log\n5", "\n5"), "origin"),
            (good.replace("\n5\n", "\n5\u{7}\n"), "control"),
        ];
        for (text, want) in cases {
            let err = SignedCheckpoint::parse(text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_file_of_notes_splits_into_notes() {
        let s = signer();
        let a = s.sign(checkpoint(1)).to_text();
        let b = s.sign(checkpoint(2)).to_text();
        let file = format!("{a}\n{b}{a}\n\n");
        let notes = split_notes(file.as_bytes());
        assert_eq!(notes.len(), 3);
        assert_eq!(notes[1].line, 8);
        for (n, want) in notes.iter().zip([&a, &b, &a]) {
            assert_eq!(n.bytes, want.as_bytes());
        }
        let torn = &file[..file.len() - 20];
        let notes = split_notes(torn.as_bytes());
        assert_eq!(notes.len(), 3);
        assert!(SignedCheckpoint::parse(notes[2].bytes).is_err());
    }

    #[test]
    fn keys_round_trip_through_pkcs8_pem() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("key.pem");
        assert!(keygen(&path, "has space").is_err());
        assert!(!path.exists());
        let public = keygen(&path, "example.com/log").unwrap().key;
        assert!(
            generate_key_file(&path).is_err(),
            "an existing key is never replaced"
        );
        let s = LogSigner::load(&path, "example.com/log").unwrap();
        assert_eq!(s.verifier().key, public);
        let line = public_key_line(&path, "example.com/log").unwrap();
        let vk = VerifierKey::load(&line).unwrap();
        let vkey_file = d.path().join("key.pub");
        fs::write(&vkey_file, format!("{line}\n")).unwrap();
        assert_eq!(VerifierKey::load(vkey_file.to_str().unwrap()).unwrap(), vk);
        assert!(VerifierKey::load(path.to_str().unwrap()).is_err());
        assert!(VerifierKey::load("nonsense").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = SignedCheckpoint::parse(&bytes);
            for n in split_notes(&bytes) {
                let _ = SignedCheckpoint::parse(n.bytes);
            }
            let _ = VerifierKey::parse_vkey(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn parsing_mutated_checkpoints_never_panics(
            at in any::<prop::sample::Index>(), with in any::<u8>(), cut in any::<prop::sample::Index>(),
        ) {
            let s = signer();
            let mut bytes = s.sign(checkpoint(77)).to_text().into_bytes();
            let i = at.index(bytes.len());
            let changed = bytes[i] != with;
            bytes[i] = with;
            if let Ok(c) = SignedCheckpoint::parse(&bytes) {
                // Whatever still parses must not verify once a signed byte changed.
                if changed && i < c.body.len() {
                    prop_assert!(c.verify(&s.verifier()).is_err());
                }
            }
            let _ = SignedCheckpoint::parse(&bytes[..cut.index(bytes.len())]);
        }

        #[test]
        fn structured_garbage_never_panics(
            lines in prop::collection::vec(prop_oneof![
                Just("\u{2014} a b".to_owned()), Just(String::new()), Just("0".to_owned()),
                Just("time 2026-12-01T14:00:00Z".to_owned()), "[a-zA-Z0-9+/=\u{2014} ]{0,12}",
            ], 0..12)
        ) {
            let text = lines.join("\n");
            let _ = SignedCheckpoint::parse(text.as_bytes());
            for n in split_notes(text.as_bytes()) {
                let _ = SignedCheckpoint::parse(n.bytes);
            }
        }
    }
}

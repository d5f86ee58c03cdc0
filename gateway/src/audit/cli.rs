//! `portcullis audit …`: what auditors and operators run against a log on disk. Every
//! command works offline, with the log directory (and, to verify, the public key) alone.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use portcullis_auditlog::checkpoint::{self, VerifierKey};
use portcullis_auditlog::proof::{self, CheckpointChoice};
use portcullis_auditlog::verify;

use super::search::{self, Filter};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Proof(#[from] proof::ProofError),
    #[error(transparent)]
    Search(#[from] search::SearchError),
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Checks a log against its signed checkpoints: prints "intact: …" (exit 0) or the
    /// first record altered, removed, reordered or inserted, and a truncated tail (exit 1).
    Verify {
        /// The log's directory (`[audit] dir`).
        dir: PathBuf,
        /// The checkpoint key: the one-line form `portcullis audit public-key` prints, a
        /// file holding it, or an SPKI PEM file.
        #[arg(long)]
        public_key: String,
        /// Checkpoint copies kept elsewhere (files or directories): they catch a cut tail.
        #[arg(long)]
        witness: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Proves that record RECORD is in the log a checkpoint signed.
    Prove {
        dir: PathBuf,
        record: u64,
        /// Prove against the latest checkpoint in this file (a witness copy); default: the
        /// log's latest.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Proves that the log at one checkpoint is a prefix of the log at a later one.
    Consistency {
        dir: PathBuf,
        /// A tree size in the log's checkpoints, or a checkpoint file.
        #[arg(long)]
        old: String,
        #[arg(long)]
        new: String,
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Writes a new Ed25519 signing key (PKCS#8 PEM, mode 0600) and prints its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// The checkpoints' origin: `portcullis/<gateway id>` unless `[audit] origin` says.
        #[arg(long)]
        origin: String,
    },
    /// Prints the public key of a signing key, in the form `verify --public-key` takes.
    PublicKey {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        origin: String,
    },
    /// Finds statements: by identity, table, class, verdict, time, masking, approver.
    Search(SearchArgs),
    /// Replays one session's records in order: its statements with their outcomes.
    Show {
        dir: PathBuf,
        session: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    pub dir: PathBuf,
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long)]
    pub table: Option<String>,
    /// read, write, ddl, dcl, txn, session, utility, admin, unknown.
    #[arg(long)]
    pub class: Option<String>,
    /// allow, deny, hold, approved.
    #[arg(long)]
    pub verdict: Option<String>,
    /// RFC 3339 time or a date (UTC).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Only statements whose results had values masked.
    #[arg(long, conflicts_with = "unmasked")]
    pub masked: bool,
    #[arg(long)]
    pub unmasked: bool,
    #[arg(long)]
    pub approved_by: Option<String>,
    #[arg(long)]
    pub session: Option<String>,
    /// Statements judged with this just-in-time grant (with --grants: its events).
    #[arg(long)]
    pub grant: Option<i64>,
    /// Grant events (requested, approved, denied, revoked, expired) instead of
    /// statements.
    #[arg(long)]
    pub grants: bool,
    /// One JSON object a line (statement, outcome, identity) instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn choice(arg: &str) -> CheckpointChoice {
    match arg.parse::<u64>() {
        Ok(n) => CheckpointChoice::Size(n),
        Err(_) => CheckpointChoice::File(arg.into()),
    }
}

fn key(arg: Option<&str>) -> Result<Option<VerifierKey>, CliError> {
    Ok(match arg {
        Some(k) => Some(VerifierKey::load(k)?),
        None => None,
    })
}

/// Runs one command; returns the exit code (1: the log is not intact).
pub fn run(cmd: AuditCmd) -> Result<i32, CliError> {
    match cmd {
        AuditCmd::Verify {
            dir,
            public_key,
            witness,
            json,
        } => {
            let key = VerifierKey::load(&public_key)?;
            let report = verify::verify(&dir, &key, &witness)?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
                if !report.to_string().ends_with('\n') {
                    println!();
                }
            }
            Ok(if report.intact { 0 } else { 1 })
        }
        AuditCmd::Prove {
            dir,
            record,
            checkpoint,
            public_key,
            json,
        } => {
            let c = checkpoint.map_or(CheckpointChoice::Latest, CheckpointChoice::File);
            let p = proof::prove(&dir, record, &c, key(public_key.as_deref())?.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
            } else {
                println!("{p}");
            }
            Ok(0)
        }
        AuditCmd::Consistency {
            dir,
            old,
            new,
            public_key,
            json,
        } => {
            let p = proof::consistency(
                &dir,
                &choice(&old),
                &choice(&new),
                key(public_key.as_deref())?.as_ref(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
            } else {
                println!("{p}");
            }
            Ok(0)
        }
        AuditCmd::Keygen { out, origin } => {
            let vkey = checkpoint::keygen(&out, &origin)?;
            eprintln!(
                "wrote {} (keep it private; set [audit] signing_key to it); the public key, for `verify --public-key`:",
                out.display()
            );
            println!("{vkey}");
            Ok(0)
        }
        AuditCmd::PublicKey { key, origin } => {
            println!("{}", checkpoint::public_key_line(&key, &origin)?);
            Ok(0)
        }
        AuditCmd::Search(a) => {
            let f = Filter {
                identity: a.identity,
                table: a.table,
                class: a.class,
                verdict: a.verdict,
                since: a.since,
                until: a.until,
                masked: match (a.masked, a.unmasked) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                approved_by: a.approved_by,
                session: a.session,
                grant: a.grant,
                grants: a.grants,
            };
            let hits = search::search(&a.dir, &f)?;
            if a.json {
                for h in &hits {
                    println!("{}", serde_json::to_string(h).unwrap_or_default());
                }
            } else {
                print!("{}", search::render_table(&hits));
                eprintln!(
                    "{} {}",
                    hits.len(),
                    if a.grants {
                        "grant events"
                    } else {
                        "statements"
                    }
                );
            }
            Ok(0)
        }
        AuditCmd::Show { dir, session, json } => {
            let records = search::show(&dir, &session)?;
            if records.is_empty() {
                return Err(CliError::Usage(format!(
                    "no records of session {session} in {}",
                    dir.display()
                )));
            }
            for r in &records {
                if json {
                    println!("{r}");
                } else {
                    println!("{}", search::describe(r));
                }
            }
            Ok(0)
        }
    }
}

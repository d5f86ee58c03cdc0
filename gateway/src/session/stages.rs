//! The gateway's own stages behind the relay's [`Hooks`]: masking today, with policy and
//! audit to sit beside it.
//!
//! Sans-IO like the rest of the session: when masking needs to know which table a
//! result column comes from and the catalog cache does not, it asks the relay to stall
//! and the driver fetches the rows over the gateway's own connection.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tracing::debug;

use super::hooks::{Hooks, Outcome, Refusal, RowStage};
use crate::mask::{
    Catalog, CopyFormat, CopyPlan, MaskError, MaskStats, Policy, RowPlan, Subject,
    apply_result_formats, parse_row_description,
};
use crate::protocol::sqlstate;

/// Per-session stages.
pub struct Stages {
    policy: Arc<ArcSwap<Policy>>,
    subject: Subject,
    catalog: Arc<Mutex<Catalog>>,
    /// Why the last catalog fetch failed, to explain a refusal.
    catalog_error: Option<String>,
}

impl Stages {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        subject: Subject,
        catalog: Arc<Mutex<Catalog>>,
    ) -> Self {
        Self {
            policy,
            subject,
            catalog,
            catalog_error: None,
        }
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refusal(&self, e: &MaskError) -> Refusal {
        let mut r = Refusal::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("portcullis refused this result: {e}"),
        );
        if let (MaskError::NeedCatalog { .. }, Some(why)) = (e, &self.catalog_error) {
            r = r.with_detail(format!("the catalog lookup failed: {why}"));
        }
        r.with_hint("Masking rules apply to this result and the gateway could not apply them safely; ask an operator or select other columns.")
    }
}

impl Hooks for Stages {
    fn wants_columns(&mut self) -> bool {
        !self.policy.load().is_exempt(&self.subject)
    }

    fn catalog_needed(&mut self, row_description: &Bytes) -> Option<Vec<u32>> {
        let policy = self.policy.load();
        if policy.is_exempt(&self.subject) {
            return None;
        }
        let columns = parse_row_description(row_description).ok()?;
        match policy.plan(&self.subject, &columns, &self.catalog()) {
            Err(MaskError::NeedCatalog { oids }) => Some(oids),
            _ => None,
        }
    }

    fn catalog_filled(&mut self, oids: &[u32], rows: Result<Vec<Bytes>, String>) {
        match rows {
            Ok(rows) => {
                let catalog = self.catalog.clone();
                let mut catalog = catalog.lock().unwrap_or_else(|p| p.into_inner());
                let mut fill = catalog.start_fill(oids);
                self.catalog_error = rows
                    .iter()
                    .try_for_each(|r| fill.ingest_data_row(r))
                    .err()
                    .map(|e| e.to_string());
                if self.catalog_error.is_none() {
                    catalog.complete(fill);
                }
            }
            Err(e) => self.catalog_error = Some(e),
        }
    }

    fn result(
        &mut self,
        row_description: &Bytes,
        formats: &[i16],
    ) -> Result<Option<Box<dyn RowStage>>, Refusal> {
        let policy = self.policy.load();
        if policy.is_exempt(&self.subject) {
            return Ok(None);
        }
        let plan = (|| {
            let mut columns = parse_row_description(row_description)?;
            if !formats.is_empty() {
                apply_result_formats(&mut columns, formats)?;
            }
            policy.plan(&self.subject, &columns, &self.catalog())
        })()
        .map_err(|e| self.refusal(&e))?;
        if plan.is_passthrough() {
            return Ok(None);
        }
        Ok(Some(Box::new(MaskRows {
            plan,
            stats: MaskStats::new(),
        })))
    }

    fn copy_out(
        &mut self,
        copy_out_response: &Bytes,
        sql: &[u8],
    ) -> Result<Option<Box<dyn RowStage>>, Refusal> {
        let policy = self.policy.load();
        if policy.is_exempt(&self.subject) {
            return Ok(None);
        }
        let format = if contains_word(sql, b"csv") {
            CopyFormat::csv()
        } else {
            CopyFormat::text()
        };
        // Which relation columns a COPY carries is not described on the wire, so with
        // rules in force it is refused rather than guessed.
        let plan = policy
            .plan_copy(
                &self.subject,
                None,
                &self.catalog(),
                copy_out_response,
                format,
            )
            .map_err(|e| self.refusal(&e))?;
        if plan.is_passthrough() {
            return Ok(None);
        }
        Ok(Some(Box::new(MaskCopy {
            plan,
            stats: MaskStats::new(),
        })))
    }

    fn completed(&mut self, outcome: Outcome<'_>) {
        if let Outcome::Complete { command_tag } = outcome {
            // Names and column numbers may have changed: forget what the cache knows.
            if [&b"ALTER"[..], b"DROP", b"CREATE", b"COMMENT"]
                .iter()
                .any(|p| command_tag.starts_with(p))
            {
                self.catalog().invalidate();
            }
        }
    }
}

fn contains_word(haystack: &[u8], word: &[u8]) -> bool {
    haystack
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

struct MaskRows {
    plan: RowPlan,
    stats: MaskStats,
}

impl RowStage for MaskRows {
    fn data_row(&mut self, frame: Bytes) -> Result<Bytes, Refusal> {
        self.plan
            .mask_data_row(frame, &mut self.stats)
            .map_err(|e| {
                Refusal::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused this result: {e}"),
                )
            })
    }
}

impl Drop for MaskRows {
    fn drop(&mut self) {
        if self.stats.total() > 0 {
            debug!(masked = self.stats.total(), "result masked");
        }
    }
}

struct MaskCopy {
    plan: CopyPlan,
    stats: MaskStats,
}

impl RowStage for MaskCopy {
    fn data_row(&mut self, frame: Bytes) -> Result<Bytes, Refusal> {
        self.plan
            .mask_copy_data(frame, &mut self.stats)
            .map_err(|e| {
                Refusal::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("portcullis refused this COPY: {e}"),
                )
            })
    }
}

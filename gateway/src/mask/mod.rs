//! Column and value masking over result rows (`DataRow`) and `COPY` data.
//!
//! Placeholder: filled in by the masking work (issue 4).

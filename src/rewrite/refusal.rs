//! Why pgshift refuses a statement: a closed set of reasons, each with the stable label that
//! `pgshift_statements_refused_total{reason}` and the README's refusal table use.
//!
//! The reason is chosen where the rewriter gives up, never derived from the wording, so rewording a message
//! cannot move a metric label. The sentence the client sees is built in [`crate::error`].

/// What kind of statement, or form, pgshift will not rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Postgres's parser rejects it, or sqlparser cannot read a write to a mirrored table.
    ParseError,
    /// sqlparser reads the statement differently from Postgres.
    Misread,
    /// A `DO` block or function/procedure body naming a mirrored table.
    OpaqueCode,
    Merge,
    Truncate,
    Copy,
    /// An update of the key the mirrored row is found by.
    KeyUpdate,
    /// `ONLY` on a migrated table.
    Only,
    /// A data-modifying WITH writing a migrated table.
    ModifyingCte,
    /// RETURNING items the rewritten statement cannot hand back as the client asked.
    Returning,
    /// `DEFAULT VALUES` that cannot be extended with the new column.
    DefaultValue,
    /// A value `up`/`down` would need evaluated a second time.
    UnrepeatableValue,
    /// The session's catalog does not know the columns (or defaults) the rewrite needs.
    ColumnsUnknown,
    /// SQL `PREPARE` of a write.
    Prepare,
    /// `EXPLAIN ANALYZE` of a write.
    ExplainAnalyze,
    /// A write through a view, rule, trigger or function pgshift cannot see into.
    InvisibleWrite,
    /// Under `new_primary`: a column the migrated table does not have.
    UnknownColumn,
    /// Under `new_primary`: a form whose translation to the new table cannot be told for certain.
    NewPrimary,
    /// A form the rewriter does not cover.
    Other,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 19] = [
        RefusalReason::ParseError,
        RefusalReason::Misread,
        RefusalReason::OpaqueCode,
        RefusalReason::Merge,
        RefusalReason::Truncate,
        RefusalReason::Copy,
        RefusalReason::KeyUpdate,
        RefusalReason::Only,
        RefusalReason::ModifyingCte,
        RefusalReason::Returning,
        RefusalReason::DefaultValue,
        RefusalReason::UnrepeatableValue,
        RefusalReason::ColumnsUnknown,
        RefusalReason::Prepare,
        RefusalReason::ExplainAnalyze,
        RefusalReason::InvisibleWrite,
        RefusalReason::UnknownColumn,
        RefusalReason::NewPrimary,
        RefusalReason::Other,
    ];

    /// The stable metric and documentation label.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::ParseError => "parse_error",
            RefusalReason::Misread => "misread",
            RefusalReason::OpaqueCode => "opaque_code",
            RefusalReason::Merge => "merge",
            RefusalReason::Truncate => "truncate",
            RefusalReason::Copy => "copy",
            RefusalReason::KeyUpdate => "key_update",
            RefusalReason::Only => "only",
            RefusalReason::ModifyingCte => "modifying_cte",
            RefusalReason::Returning => "returning",
            RefusalReason::DefaultValue => "default_value",
            RefusalReason::UnrepeatableValue => "unrepeatable_value",
            RefusalReason::ColumnsUnknown => "columns_unknown",
            RefusalReason::Prepare => "prepare",
            RefusalReason::ExplainAnalyze => "explain_analyze",
            RefusalReason::InvisibleWrite => "invisible_write",
            RefusalReason::UnknownColumn => "unknown_column",
            RefusalReason::NewPrimary => "new_primary",
            RefusalReason::Other => "other",
        }
    }

    /// This reason, with the detail that says what exactly could not be rewritten.
    pub fn because(self, detail: impl Into<String>) -> Unrewritable {
        Unrewritable {
            reason: self,
            detail: detail.into(),
        }
    }
}

/// Why one statement cannot be rewritten, before it is tied to a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrewritable {
    pub reason: RefusalReason,
    /// What exactly, in a sentence fragment that completes the refusal message.
    pub detail: String,
}

impl Unrewritable {
    /// The same reason with more said after the detail (e.g. which phase it applies to).
    pub fn and(mut self, more: impl std::fmt::Display) -> Self {
        self.detail = format!("{} {more}", self.detail);
        self
    }
}

/// A statement pgshift will not run, and why. Nothing of the client's message is executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub migration: String,
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn new(migration: impl Into<String>, why: Unrewritable) -> Self {
        Refusal {
            migration: migration.into(),
            reason: why.reason,
            detail: why.detail,
        }
    }

    /// The stable label of `pgshift_statements_refused_total{reason}` and of the README's refusal table.
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }

    /// The sentence a client (and `pgshift rewrite`) sees.
    pub fn message(&self) -> String {
        crate::error::refusal_message(self)
    }
}

impl RefusalReason {
    /// For `map_err`: a failure of a lower layer (Postgres's scanner, a splice) that leaves a form uncovered.
    pub fn other(e: impl std::fmt::Display) -> Unrewritable {
        RefusalReason::Other.because(e.to_string())
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::fmt::Display for Unrewritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every label an operator can see on the metric has its row in the README's refusal table.
    #[test]
    fn every_reason_is_documented() {
        let readme = include_str!("../../README.md");
        for reason in RefusalReason::ALL {
            assert!(
                readme.contains(&format!("`{}`", reason.code())),
                "README's refusal table lacks {}",
                reason.code()
            );
        }
        let mut codes: Vec<_> = RefusalReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), RefusalReason::ALL.len(), "codes are distinct");
    }
}

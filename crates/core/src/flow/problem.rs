//! One located problem in a flow file, with a stable code and a fix hint.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Every kind of flow problem. Codes are stable: tools may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemCode {
    UnreadableFile,
    InvalidJson,
    MissingField,
    UnknownField,
    InvalidType,
    InvalidValue,
    SchemaViolation,
    DuplicateFlowId,
    DuplicateStepId,
    UnknownStepType,
    UnknownTriggerType,
    InvalidStepInput,
    ConnectionNotAllowed,
    UnknownConnection,
    TemplateSyntax,
    UnknownHelper,
    UnknownReference,
    UnknownTriggerOutput,
    UnknownConstant,
    UnknownStep,
    LaterStepReference,
    UnknownStepOutput,
    MaybeNotRunReference,
    PathsNotAllowed,
    UnknownPath,
    MissingSecret,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::UnreadableFile => "unreadable_file",
            ProblemCode::InvalidJson => "invalid_json",
            ProblemCode::MissingField => "missing_field",
            ProblemCode::UnknownField => "unknown_field",
            ProblemCode::InvalidType => "invalid_type",
            ProblemCode::InvalidValue => "invalid_value",
            ProblemCode::SchemaViolation => "schema_violation",
            ProblemCode::DuplicateFlowId => "duplicate_flow_id",
            ProblemCode::DuplicateStepId => "duplicate_step_id",
            ProblemCode::UnknownStepType => "unknown_step_type",
            ProblemCode::UnknownTriggerType => "unknown_trigger_type",
            ProblemCode::InvalidStepInput => "invalid_step_input",
            ProblemCode::ConnectionNotAllowed => "connection_not_allowed",
            ProblemCode::UnknownConnection => "unknown_connection",
            ProblemCode::TemplateSyntax => "template_syntax",
            ProblemCode::UnknownHelper => "unknown_helper",
            ProblemCode::UnknownReference => "unknown_reference",
            ProblemCode::UnknownTriggerOutput => "unknown_trigger_output",
            ProblemCode::UnknownConstant => "unknown_constant",
            ProblemCode::UnknownStep => "unknown_step",
            ProblemCode::LaterStepReference => "later_step_reference",
            ProblemCode::UnknownStepOutput => "unknown_step_output",
            ProblemCode::MaybeNotRunReference => "maybe_not_run_reference",
            ProblemCode::PathsNotAllowed => "paths_not_allowed",
            ProblemCode::UnknownPath => "unknown_path",
            ProblemCode::MissingSecret => "missing_secret",
        }
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem in a flow: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: Option<PathBuf>,
    /// JSON pointer into the flow document ("" is the whole document).
    pub pointer: String,
    pub code: ProblemCode,
    pub message: String,
    pub hint: String,
    /// Line and column (from 1) of the pointer's value in the file, when known.
    pub position: Option<(usize, usize)>,
}

impl Problem {
    pub fn new(
        pointer: impl Into<String>,
        code: ProblemCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Problem {
            file: None,
            pointer: pointer.into(),
            code,
            message: message.into(),
            hint: hint.into(),
            position: None,
        }
    }
}

/// `file:line:column: /pointer: [code] message. hint` (the position when known)
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some((line, column)) = self.position {
                write!(f, ":{line}:{column}")?;
            }
            write!(f, ": ")?;
        }
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(
            f,
            "{pointer}: [{}] {}",
            self.code,
            self.message.trim_end_matches('.')
        )?;
        if !self.hint.is_empty() {
            write!(f, ". {}", self.hint)?;
        }
        Ok(())
    }
}

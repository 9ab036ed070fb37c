//! Exit codes, a contract with users' scripts (DESIGN.md, "Interfaces").

/// What a command ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok = 0,
    /// 1: invalid input, or the operation was refused.
    Invalid = 1,
    /// 3: a destructive change was refused (`plan`, `lock`, `apply`).
    Destructive = 3,
    /// 4: no quorum, or the cluster (or the local agent) is unreachable.
    NoQuorum = 4,
}

impl Exit {
    /// The exit code an agent's refusal asks for (1 invalid, 3 destructive, 4 no quorum).
    #[must_use]
    pub fn from_refusal(code: u8) -> Self {
        match code {
            3 => Self::Destructive,
            4 => Self::NoQuorum,
            _ => Self::Invalid,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e as u8)
    }
}

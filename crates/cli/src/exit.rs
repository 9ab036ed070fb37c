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

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e as u8)
    }
}

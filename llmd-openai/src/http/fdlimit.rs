//! The open-file limit: every connection is a descriptor.

/// The process's soft limit on open files, where the OS has one.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the process's soft limit on open files as far as the OS allows (its hard
/// limit; macOS caps it lower), as vLLM's API server does at start (`set_ulimit`): every
/// connection is a descriptor, and a 1 024 soft limit is a few hundred clients. Returns
/// the soft limit in force afterwards (`None` where the OS has no such limit or it
/// cannot be read); logs what it did. Call it once at start, before building a
/// [`ServeConfig`](super::ServeConfig), whose connection limit derives from it.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let before = open_file_limit();
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) if Some(now) != before => {
                tracing::info!(from = ?before, to = now, "raised the open-file limit");
                Some(now)
            }
            Ok(now) => {
                tracing::info!(limit = now, "open-file limit already at its maximum");
                Some(now)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the open-file limit; connections beyond it will be refused");
                before
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

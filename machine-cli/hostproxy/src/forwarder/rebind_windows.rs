use socket2::Socket;

/// Nothing: on Windows SO_REUSEADDR would let two listeners share a port, and a port in
/// TIME_WAIT does not keep a new listener out.
pub(super) fn allow_rebind(_socket: &Socket) -> std::io::Result<()> {
    Ok(())
}

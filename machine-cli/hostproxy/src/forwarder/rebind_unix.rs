use socket2::Socket;

/// SO_REUSEADDR: on unix it only lets a listener take a port whose old connections are in
/// TIME_WAIT (a port published again right after its container restarted).
pub(super) fn allow_rebind(socket: &Socket) -> std::io::Result<()> {
    socket.set_reuse_address(true)
}

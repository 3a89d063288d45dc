package dev.vmm.vhostuser.message;

/**
 * A vhost-user message that cannot be honoured, with what it means for the peer. The
 * front-end may be a possibly malicious guest's VMM: every bad value lands here, never in
 * an unchecked exception.
 */
public final class VhostUserException extends Exception {
    private static final long serialVersionUID = 1L;

    /** What the connection does about it. */
    public enum Kind {
        /**
         * The message was read whole (framing intact) but is wrong: answer an error when the
         * front-end expects a reply (REPLY_ACK non-zero, empty reply body), otherwise log and go on.
         */
        REPLY_ERROR,
        /** Framing is lost or the peer broke the protocol: close the connection. */
        CLOSE_CONNECTION
    }

    private final Kind kind;
    private final int request;

    public VhostUserException(Kind kind, int request, String message) {
        super(VhostUserRequest.name(request) + ": " + message);
        this.kind = kind;
        this.request = request;
    }

    public VhostUserException(Kind kind, int request, String message, Throwable cause) {
        super(VhostUserRequest.name(request) + ": " + message, cause);
        this.kind = kind;
        this.request = request;
    }

    /** An error reply for a well-framed but invalid request. */
    public static VhostUserException replyError(int request, String message) {
        return new VhostUserException(Kind.REPLY_ERROR, request, message);
    }

    /** A protocol violation after which the connection is closed. */
    public static VhostUserException closeConnection(int request, String message) {
        return new VhostUserException(Kind.CLOSE_CONNECTION, request, message);
    }

    public Kind kind() { return kind; }

    /** Request code of the message concerned (0 when unknown). */
    public int request() { return request; }
}

package dev.vmm.vhostuser.connection;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.vhostuser.message.MemoryTable;
import dev.vmm.vhostuser.message.VhostUserDecoder;
import dev.vmm.vhostuser.message.VhostUserException;
import dev.vmm.vhostuser.message.VhostUserHeader;
import dev.vmm.vhostuser.message.VhostUserMessage;
import io.netty.channel.IoEvent;
import io.netty.channel.IoEventLoop;
import io.netty.channel.IoRegistration;
import io.netty.channel.epoll.EpollIoHandle;
import io.netty.channel.epoll.EpollIoOps;
import io.netty.channel.unix.FileDescriptor;
import java.nio.ByteBuffer;
import java.util.function.Consumer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One accepted front-end: reads messages from the non-blocking stream socket with recvmsg,
 * validates them ({@link VhostUserDecoder}), hands them to a {@link VhostUserDispatcher} and
 * writes the replies with sendmsg. Joins the event loop as an {@link EpollIoHandle}
 * (level-triggered EPOLLIN).
 *
 * <p>Framing: a message is read as the 12-byte header, then exactly {@code size} payload bytes,
 * so a read never crosses into the next message. Reads may stop anywhere (EAGAIN) and resume on
 * the next wakeup. Fds arrive with the first bytes of the sendmsg that carried them; all fds
 * received while a message is being read belong to it (at most 8; more: the message is rejected
 * and every one of them closed).
 *
 * <p>Replies are a few hundred bytes and the front-end waits for each one, so they are written
 * at once; a socket that cannot take a reply (EAGAIN: the front-end stopped reading) is closed
 * rather than buffered without bound.
 *
 * <p>Thread contract: everything runs on the event loop it is registered with, except
 * {@link #closeAsync()}.
 */
public final class VhostUserConnection implements EpollIoHandle {
    private static final Logger log = LoggerFactory.getLogger(VhostUserConnection.class);
    /** Messages handled per wakeup before yielding to other handles (level-triggered: the rest wait). */
    private static final int MESSAGES_PER_WAKEUP = 64;
    private static final int MAX_FDS = MemoryTable.MAX_REGIONS;

    private final int fd;
    private final FileDescriptor nettyFd;
    private final IoEventLoop loop;
    private final String name;
    private final VhostUserBackendHandler handler;
    private final VhostUserDispatcher dispatcher;
    private final Consumer<VhostUserConnection> onClose;

    // ---- event-loop confined state ----
    private final LibcSocket.MsgBuffer rx = new LibcSocket.MsgBuffer(VhostUserHeader.SIZE + VhostUserHeader.MAX_PAYLOAD_SIZE, MAX_FDS);
    private final LibcSocket.MsgBuffer tx = new LibcSocket.MsgBuffer(VhostUserHeader.SIZE + VhostUserHeader.MAX_PAYLOAD_SIZE, MAX_FDS);
    private final int[] pendingFds = new int[MAX_FDS];
    private int pendingFdCount;
    private boolean fdsTruncated;
    private int have;                 // bytes of the current message in rx (header + payload)
    private VhostUserHeader header;   // null while the header is incomplete
    private IoRegistration registration;
    private boolean closed;
    private long messages;

    VhostUserConnection(int fd, IoEventLoop loop, String name, VhostUserBackendHandler handler, Consumer<VhostUserConnection> onClose) {
        this.fd = fd;
        this.nettyFd = new FileDescriptor(fd);
        this.loop = loop;
        this.name = name;
        this.handler = handler;
        this.onClose = onClose;
        this.dispatcher = new VhostUserDispatcher(handler, this::sendReply);
    }

    /** Registers with the loop and starts reading; on the loop thread. */
    void start() {
        assert loop.inEventLoop();
        loop.register(this).addListener(f -> {
            if (!f.isSuccess()) {
                log.warn("{}: cannot register with the event loop", name, f.cause());
                disconnect();
                return;
            }
            registration = (IoRegistration) f.getNow();
            if (closed) {
                registration.cancel();
            } else {
                registration.submit(EpollIoOps.EPOLLIN);
            }
        });
    }

    @Override
    public FileDescriptor fd() { return nettyFd; }

    /** Messages handled so far. */
    public long messages() { return messages; }

    public VhostUserDispatcher dispatcher() { return dispatcher; }

    public boolean isClosed() { return closed; }

    @Override
    public void handle(IoRegistration reg, IoEvent event) {
        if (closed) return;
        try {
            for (int i = 0; i < MESSAGES_PER_WAKEUP && !closed; i++) {
                if (!readOne()) break;
            }
        } catch (VhostUserException e) {
            log.warn("{}: closing the connection: {}", name, e.getMessage());
            disconnect();
        } catch (LastErrorException e) {
            log.info("{}: socket error, closing: {}", name, LibC.describe(e.getErrorCode()));
            disconnect();
        } catch (RuntimeException e) {
            log.error("{}: unexpected error, closing the connection", name, e);
            disconnect();
        }
    }

    /** Reads and handles at most one message; false when the socket has no more bytes now. */
    private boolean readOne() throws VhostUserException {
        int want = header == null ? VhostUserHeader.SIZE : VhostUserHeader.SIZE + header.size();
        while (have < want) {
            long n = rx.recv(fd, have, want - have, 0);
            collectFds();
            if (n < 0) return false;                    // EAGAIN: resume on the next wakeup
            if (n == 0) {
                if (have > 0) log.info("{}: front-end closed the socket in the middle of a message", name);
                disconnect();
                return false;
            }
            have += (int) n;
            if (header == null && have == VhostUserHeader.SIZE) {
                ByteBuffer hb = rx.dataPointer().getByteBuffer(0, VhostUserHeader.SIZE).order(VhostUserHeader.ORDER);
                header = VhostUserDecoder.checkHeader(VhostUserHeader.decode(hb));   // CLOSE_CONNECTION on bad size/version
                want = VhostUserHeader.SIZE + header.size();
            }
        }
        VhostUserHeader h = header;
        byte[] payload = rx.dataPointer().getByteArray(VhostUserHeader.SIZE, h.size());
        int nfds = pendingFdCount;
        boolean truncated = fdsTruncated;
        header = null;
        have = 0;
        pendingFdCount = 0;
        fdsTruncated = false;
        messages++;
        if (log.isDebugEnabled()) log.debug("{}: {} with {} fds", name, h, nfds);
        VhostUserMessage msg;
        try {
            msg = VhostUserDecoder.decode(h, payload, pendingFds, nfds, truncated);   // closes the fds on failure
        } catch (VhostUserException e) {
            dispatcher.reject(h, e);
            return true;
        }
        dispatcher.dispatch(msg);
        return true;
    }

    private void collectFds() {
        if (rx.truncated()) fdsTruncated = true;
        for (int i = 0; i < rx.fdCount(); i++) {
            int f = rx.fd(i);
            if (pendingFdCount < MAX_FDS) {
                pendingFds[pendingFdCount++] = f;
            } else {
                LibcSocket.closeQuietly(f);
                fdsTruncated = true;
            }
        }
    }

    private void sendReply(int request, byte[] payload, int[] fds) throws VhostUserException {
        if (closed) throw VhostUserException.closeConnection(request, "connection closed");
        ByteBuffer b = tx.dataPointer().getByteBuffer(0, VhostUserHeader.SIZE + payload.length).order(VhostUserHeader.ORDER);
        VhostUserHeader.reply(request, payload.length).encode(b);
        b.put(payload);
        int len = VhostUserHeader.SIZE + payload.length;
        int off = 0;
        int nfds = fds.length;
        try {
            while (off < len) {
                long n = tx.send(fd, off, len - off, fds, nfds, LibcSocket.MSG_DONTWAIT);
                if (n < 0) throw VhostUserException.closeConnection(request, "front-end does not read its replies (send buffer full)");
                off += (int) n;
                nfds = 0;   // the fds went with the first bytes
            }
        } catch (LastErrorException e) {
            throw new VhostUserException(VhostUserException.Kind.CLOSE_CONNECTION, request, "cannot send reply: " + LibC.describe(e.getErrorCode()), e);
        }
    }

    /**
     * Closes the connection: leaves epoll, closes the socket and any fds of a half-read
     * message, tells the handler and the listener. Idempotent; on the loop thread.
     */
    /**
     * True when the front-end has hung up but we have not read the end of the stream yet (its
     * EOF is still queued behind our accept of a new connection). Loop thread; control plane.
     */
    boolean peerGone() {
        try (com.sun.jna.Memory pfd = new com.sun.jna.Memory(dev.vmm.core.linux.LibcPoll.POLLFD_SIZEOF)) {
            pfd.setInt(0, fd);
            pfd.setShort(4, (short) (dev.vmm.core.linux.LibcPoll.POLLIN | POLLRDHUP));
            pfd.setShort(6, (short) 0);
            int n = dev.vmm.core.linux.LibcPoll.poll(com.sun.jna.Pointer.nativeValue(pfd), 1, 0);
            short revents = pfd.getShort(6);
            return n == 1 && (revents & (dev.vmm.core.linux.LibcPoll.POLLHUP | POLLRDHUP | dev.vmm.core.linux.LibcPoll.POLLERR)) != 0;
        } catch (com.sun.jna.LastErrorException e) {
            return true;
        }
    }

    /** poll(2): the peer shut down its writing side (Linux). */
    private static final short POLLRDHUP = 0x2000;

    void disconnect() {
        assert loop.inEventLoop();
        if (closed) return;
        closed = true;
        // cancel before close: the epoll registry is keyed by fd number, and a new fd may reuse it at once
        if (registration != null) registration.cancel();
        LibcSocket.closeQuietly(fd);
        for (int i = 0; i < pendingFdCount; i++) LibcSocket.closeQuietly(pendingFds[i]);
        pendingFdCount = 0;
        log.info("{}: front-end disconnected", name); // the one line per disconnect, whatever the cause
        // rx/tx are left to the GC cleaner, not freed here: a late access must not touch freed native memory
        try {
            handler.disconnected();
        } catch (RuntimeException e) {
            log.error("{}: handler failed on disconnect", name, e);
        }
        onClose.accept(this);
    }

    /** Closes the connection from any thread. */
    public void closeAsync() {
        if (loop.inEventLoop()) disconnect(); else loop.execute(this::disconnect);
    }

    /** IoHandle.close (the event loop shuts down): same as {@link #closeAsync()}. */
    @Override
    public void close() {
        closeAsync();
    }

    @Override
    public String toString() { return name; }
}

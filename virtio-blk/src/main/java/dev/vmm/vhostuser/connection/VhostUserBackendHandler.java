package dev.vmm.vhostuser.connection;

import dev.vmm.vhostuser.message.DeviceConfig;
import dev.vmm.vhostuser.message.Inflight;
import dev.vmm.vhostuser.message.LogDescription;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VhostUserException;
import dev.vmm.vhostuser.message.VhostUserRequest;
import dev.vmm.vhostuser.message.VringAddr;
import java.util.List;

/**
 * The device side of a vhost-user connection: one typed call per front-end request, made by
 * {@link VhostUserDispatcher} after the message passed syntax and fd validation. Semantic
 * checks (ring index in range, features offered, addresses inside the memory table) are the
 * implementation's, reported by throwing {@link VhostUserException} (usually
 * {@link VhostUserException.Kind#REPLY_ERROR}; CLOSE_CONNECTION drops the front-end).
 *
 * <p><b>File descriptors:</b> when a call that receives fds returns normally, the
 * implementation owns them and must close them eventually; when it throws, it MUST NOT have
 * closed or kept them: the dispatcher closes them. An fd the implementation returns
 * ({@link InflightFd}) stays the implementation's; the dispatcher only sends a copy.
 *
 * <p>REPLY_ACK is done by the dispatcher: implementations just return or throw.
 * Thread contract: all calls come on the listener's event-loop thread, one at a time.
 * Defaults throw "unsupported" for the requests a block device may do without.
 */
public interface VhostUserBackendHandler {

    /** GET_FEATURES: virtio feature bits offered, including bit 30 (protocol features). */
    long getFeatures() throws VhostUserException;

    /** SET_FEATURES: the bits the driver accepted. */
    void setFeatures(long features) throws VhostUserException;

    /** GET_PROTOCOL_FEATURES: protocol feature bits offered. */
    long getProtocolFeatures() throws VhostUserException;

    /** SET_PROTOCOL_FEATURES: the protocol bits the front-end accepted. */
    void setProtocolFeatures(long features) throws VhostUserException;

    /** SET_OWNER: session start. */
    void setOwner() throws VhostUserException;

    /** RESET_OWNER (deprecated): the spec recommends ignoring it or disabling all rings. */
    default void resetOwner() throws VhostUserException {}

    /** SET_MEM_TABLE: {@code fds[i]} maps {@code regions.get(i)}; replaces the whole table. */
    void setMemTable(List<MemoryRegion> regions, int[] fds) throws VhostUserException;

    /** GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS). */
    default long getMaxMemSlots() throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_GET_MAX_MEM_SLOTS); }

    /** ADD_MEM_REG: one more region mapped from {@code fd}. */
    default void addMemReg(MemoryRegion region, int fd) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_ADD_MEM_REG); }

    /** REM_MEM_REG: the region with this guest address, user address and size goes away. */
    default void remMemReg(MemoryRegion region) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_REM_MEM_REG); }

    /** GET_QUEUE_NUM (MQ): most queues supported. */
    long getQueueNum() throws VhostUserException;

    /** SET_VRING_NUM: queue size. */
    void setVringNum(int index, int num) throws VhostUserException;

    /** SET_VRING_ADDR. */
    void setVringAddr(VringAddr addr) throws VhostUserException;

    /** SET_VRING_BASE: next available index to read. */
    void setVringBase(int index, int base) throws VhostUserException;

    /** GET_VRING_BASE: stop the ring and return the next available index it would read. */
    int getVringBase(int index) throws VhostUserException;

    /** SET_VRING_KICK: kick eventfd, or -1 when the front-end asks for polling (bit 8). */
    void setVringKick(int index, int fd) throws VhostUserException;

    /** SET_VRING_CALL: call eventfd, or -1 (bit 8). */
    void setVringCall(int index, int fd) throws VhostUserException;

    /** SET_VRING_ERR: error eventfd, or -1 (bit 8). */
    void setVringErr(int index, int fd) throws VhostUserException;

    /** SET_VRING_ENABLE. */
    void setVringEnable(int index, boolean enable) throws VhostUserException;

    /** GET_CONFIG: exactly {@code size} bytes of config space at {@code offset}. */
    byte[] getConfig(int offset, int size, int flags) throws VhostUserException;

    /** SET_CONFIG: the front-end writes config space (flags: see {@link DeviceConfig}). */
    default void setConfig(int offset, byte[] data, int flags) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_SET_CONFIG); }

    /** An in-flight area returned by {@link #getInflightFd}: the fd stays owned by the handler. */
    record InflightFd(Inflight description, int fd) {}

    /** GET_INFLIGHT_FD (INFLIGHT_SHMFD): an in-flight area for numQueues x queueSize. */
    default InflightFd getInflightFd(int numQueues, int queueSize) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_GET_INFLIGHT_FD); }

    /** SET_INFLIGHT_FD: the area kept by the front-end across a back-end restart. */
    default void setInflightFd(Inflight inflight, int fd) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_SET_INFLIGHT_FD); }

    /** SET_LOG_BASE (migration dirty log); fd is -1 when none came. */
    default void setLogBase(LogDescription log, int fd) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_SET_LOG_BASE); }

    /** RESET_DEVICE (RESET_DEVICE): disable all rings, back to the initial state. */
    default void resetDevice() throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_RESET_DEVICE); }

    /** SET_STATUS (STATUS). */
    default void setStatus(int status) throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_SET_STATUS); }

    /** GET_STATUS (STATUS). */
    default int getStatus() throws VhostUserException { throw unsupported(VhostUserRequest.VHOST_USER_GET_STATUS); }

    /** The front-end went away (EOF, error or a protocol violation); a new one may connect later. */
    void disconnected();

    /** A front-end connected; {@code peer} names it for logs and monitors ({@code pid=P,uid=U}). */
    default void connected(String peer) {}

    /** The exception for a request this handler does not implement. */
    static VhostUserException unsupported(int request) {
        return VhostUserException.replyError(request, "not supported by this back-end");
    }
}

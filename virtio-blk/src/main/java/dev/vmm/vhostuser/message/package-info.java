/**
 * vhost-user wire types (QEMU docs/interop/vhost-user.rst): request codes and protocol features
 * named as in the spec, the 12-byte header, one record per payload layout (native byte order,
 * little-endian here) and the layered decoder (syntax, then fd rules; semantics are the device's).
 *
 * <p>Thread contract: the records and constant holders are immutable and usable from any thread;
 * a {@link dev.vmm.vhostuser.message.VhostUserMessage} owns file descriptors and belongs to the
 * connection thread that decoded it until it is closed.
 */
package dev.vmm.vhostuser.message;

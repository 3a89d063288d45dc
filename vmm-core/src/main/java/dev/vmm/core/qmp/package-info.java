/**
 * The QMP monitor: QEMU's JSON control protocol over unix sockets, as specified by
 * <a href="https://www.qemu.org/docs/master/interop/qmp-spec.html">docs/interop/qmp-spec.rst</a>.
 *
 * <ul>
 * <li>{@link dev.vmm.core.qmp.QmpFramer}: splits the byte stream into JSON texts (syntax only).</li>
 * <li>{@link dev.vmm.core.qmp.QmpConnection}: one monitor: greeting, capabilities negotiation,
 *     request validation, one command at a time, replies.</li>
 * <li>{@link dev.vmm.core.qmp.QmpServer}: listeners, the set of monitors, event broadcast.</li>
 * <li>{@link dev.vmm.core.qmp.QmpCommands}: the command table; modules register their own
 *     commands ({@link dev.vmm.core.qmp.CoreCommands} for the daemon model), so this package
 *     depends on no export or server module.</li>
 * </ul>
 */
package dev.vmm.core.qmp;

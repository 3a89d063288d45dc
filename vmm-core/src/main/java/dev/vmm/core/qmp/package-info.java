/**
 * The QMP monitor: QEMU's JSON control protocol over unix sockets, as specified by
 * <a href="https://www.qemu.org/docs/master/interop/qmp-spec.html">docs/interop/qmp-spec.rst</a>.
 *
 * <ul>
 * <li>{@link dev.vmm.core.qmp.QmpFramer}: splits the byte stream into JSON texts (syntax only).</li>
 * <li>{@link dev.vmm.core.qmp.QmpConnection}: one monitor: greeting, capabilities negotiation,
 *     request validation, one command at a time, replies.</li>
 * <li>{@link dev.vmm.core.qmp.QmpServer}: listeners, the set of monitors, event broadcast.</li>
 * <li>{@link dev.vmm.core.qmp.QmpCommands}: the command and event table; modules register their
 *     own commands ({@link dev.vmm.core.qmp.CoreCommands} for the daemon model), so this package
 *     depends on no export or server module. Each command is registered with its argument and
 *     return types ({@code register(name, args, returns, command)}), which the monitor enforces
 *     and {@code query-qmp-schema} publishes.</li>
 * <li>{@link dev.vmm.core.qmp.QmpType}: QAPI types (builtins, enums, arrays, objects and flat
 *     unions, alternates), their checking in QEMU's words, their {@code SchemaInfo}.
 *     {@link dev.vmm.core.qmp.CoreTypes} holds the shared declarations (QEMU 7.2 names).</li>
 * </ul>
 */
package dev.vmm.core.qmp;

package dev.vmm.core.qmp;

/**
 * The {@code class} member of a QMP error reply (qmp-spec.rst "Error"; QAPI {@code QapiErrorClass}).
 * Clients are told to rely on the class only for these; everything else is {@link #GenericError}.
 */
public enum QmpErrorClass {
    /** Anything not covered below; the {@code desc} says what. */
    GenericError,
    /** The requested command does not exist, or may not be used now (before negotiation). */
    CommandNotFound,
    /** A device has no medium. */
    DeviceNotActive,
    /** The requested device (here: node or IOThread) does not exist. */
    DeviceNotFound,
    /** KVM capability missing (never used by a storage daemon; listed for completeness). */
    KVMMissingCap
}

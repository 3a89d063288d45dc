package dev.vmm.core.qmp;

/**
 * A command failure with its QMP error class; answered as
 * {@code {"error": {"class": ..., "desc": ...}}}. Records no stack trace: it describes a
 * request, and the client only ever sees {@link #getMessage()}.
 */
public final class QmpException extends Exception {
    private static final long serialVersionUID = 1L;

    private final QmpErrorClass errorClass;

    public QmpException(QmpErrorClass errorClass, String desc) {
        super(desc, null, false, false);
        this.errorClass = errorClass;
    }

    public static QmpException generic(String desc) {
        return new QmpException(QmpErrorClass.GenericError, desc);
    }

    public QmpErrorClass errorClass() { return errorClass; }
}

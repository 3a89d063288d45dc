package dev.vmm.cli.guest;

/** A host program the guest needs is not installed; the message names the Debian package. */
public final class MissingToolException extends GuestException {
    private static final long serialVersionUID = 1L;
    private final String tool;
    private final String debianPackage;

    public MissingToolException(String tool, String debianPackage, String what) {
        super(what + ": install the Debian package '" + debianPackage + "' (apt-get install " + debianPackage + ")");
        this.tool = tool;
        this.debianPackage = debianPackage;
    }

    /** The program (or file) that is missing, e.g. {@code qemu-system-x86_64}. */
    public String tool() {
        return tool;
    }

    /** The Debian 12 package that provides it, e.g. {@code qemu-system-x86}. */
    public String debianPackage() {
        return debianPackage;
    }
}

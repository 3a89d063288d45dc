/**
 * {@code driver=nbd}: an NBD client block driver (QEMU's keys), asynchronous on the node's home
 * IOThread, with reconnect. Found by {@link java.util.ServiceLoader} through
 * {@link dev.vmm.core.block.ProtocolDriverFactory}.
 */
package dev.vmm.nbd.driver;

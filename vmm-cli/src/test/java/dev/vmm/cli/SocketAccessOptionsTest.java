package dev.vmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.vmm.core.options.OptionException;
import dev.vmm.core.net.UnixSocketFiles;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFileAttributes;
import org.junit.jupiter.api.Test;

/** {@code vmm serve --socket-mode --socket-group}: parsed and checked before anything listens. */
class SocketAccessOptionsTest {
    @Test
    void anOctalModeAndAnExistingGroup() throws Exception {
        String group = Files.readAttributes(Path.of("/tmp"), PosixFileAttributes.class).group().getName();
        UnixSocketFiles.Access a = ServeCommand.socketAccess("0660", group);
        assertEquals(0660, a.mode());
        assertEquals(group, a.group().getName());
        assertEquals(UnixSocketFiles.Access.PRIVATE.mode(), ServeCommand.socketAccess("0600", null).mode());
    }

    @Test
    void badValuesAreOneLineErrors() {
        assertEquals("--socket-mode: '0x1ff' is not an octal mode such as 0660",
                assertThrows(OptionException.class, () -> ServeCommand.socketAccess("0x1ff", null)).getMessage());
        assertEquals("--socket-mode: socket mode 0066: permission bits with owner read and write (0600..0777)",
                assertThrows(OptionException.class, () -> ServeCommand.socketAccess("066", null)).getMessage());
        assertEquals("--socket-group: no group named 'no-such-group-vmm'",
                assertThrows(OptionException.class, () -> ServeCommand.socketAccess("0660", "no-such-group-vmm")).getMessage());
    }
}

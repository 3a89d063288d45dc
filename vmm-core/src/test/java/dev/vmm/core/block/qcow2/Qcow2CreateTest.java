package dev.vmm.core.block.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.testing.Tools;
import java.io.IOException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

class Qcow2CreateTest {
    @TempDir Path dir;

    @ParameterizedTest
    @ValueSource(longs = {512, 64L << 20, 1L << 30, (1L << 30) + 512, 100L << 30})
    void qemuImgAcceptsTheImage(long size) throws Exception {
        String qemuImg = Tools.require("qemu-img", "qemu-utils");
        Path img = dir.resolve("new.qcow2");
        Qcow2Create.create(img, size);
        Process check = new ProcessBuilder(qemuImg, "check", img.toString()).redirectErrorStream(true).start();
        String out = new String(check.getInputStream().readAllBytes());
        assertEquals(0, check.waitFor(), out);
        Process info = new ProcessBuilder(qemuImg, "info", "--output=json", img.toString()).redirectErrorStream(true).start();
        String json = new String(info.getInputStream().readAllBytes());
        assertEquals(0, info.waitFor(), json);
        assertTrue(json.contains("\"virtual-size\": " + size), json);
        assertTrue(json.contains("\"cluster-size\": 65536"), json);
        assertTrue(json.contains("\"compat\": \"1.1\""), json);
    }

    @ParameterizedTest
    @ValueSource(longs = {0, -512, 1000})
    void badSizesAreRefused(long size) {
        assertThrows(IllegalArgumentException.class, () -> Qcow2Create.create(dir.resolve("bad.qcow2"), size));
        assertTrue(Files.notExists(dir.resolve("bad.qcow2")));
    }

    @org.junit.jupiter.api.Test
    void anExistingFileIsNotOverwritten() throws IOException {
        Path img = dir.resolve("taken");
        Files.writeString(img, "precious");
        assertThrows(FileAlreadyExistsException.class, () -> Qcow2Create.create(img, 1 << 20));
        assertEquals("precious", Files.readString(img));
    }
}

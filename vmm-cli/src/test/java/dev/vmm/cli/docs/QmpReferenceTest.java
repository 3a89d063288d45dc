package dev.vmm.cli.docs;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.ServeCommand;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.qmp.CoreCommands;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/** docs/qmp.md has one section per QMP command the daemon registers, and none for commands it lacks. */
class QmpReferenceTest {
    private static final Pattern SECTION = Pattern.compile("(?m)^### `([^`]+)`");

    @Test
    void everyRegisteredCommandIsDocumentedAndNothingElse() throws Exception {
        List<String> registered;
        Daemon daemon = Daemon.start();
        try {
            registered = ServeCommand.qmpCommands(daemon, () -> { }).names();
        } finally {
            daemon.shutdown(false);
        }
        String md = Files.readString(CliReferenceTest.repoFile("docs/qmp.md"), StandardCharsets.UTF_8);
        List<String> documented = new ArrayList<>();
        Matcher m = SECTION.matcher(md);
        while (m.find()) documented.add(m.group(1));
        assertEquals(new TreeSet<>(registered), new TreeSet<>(documented),
                "docs/qmp.md needs one '### `command`' section per registered QMP command (left: registered, right: documented)");
        assertEquals(registered.size(), documented.size(), "a command is documented twice: " + documented);
    }

    @Test
    void everyEventIsDocumented() throws Exception {
        String md = Files.readString(CliReferenceTest.repoFile("docs/qmp.md"), StandardCharsets.UTF_8);
        for (String event : List.of(CoreCommands.NODE_MOVED, CoreCommands.BLOCK_EXPORT_DELETED)) {
            assertTrue(md.contains("| `" + event + "`"), event + " is missing from the events table of docs/qmp.md");
        }
    }
}

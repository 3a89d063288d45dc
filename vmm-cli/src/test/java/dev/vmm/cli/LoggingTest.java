package dev.vmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import org.junit.jupiter.api.Test;

/** {@code --log-level} of serve and demo: the error names exactly the levels that are accepted. */
class LoggingTest {
    @Test
    void theMessageListsWhatIsAccepted() {
        StringWriter out = new StringWriter();
        PrintWriter err = new PrintWriter(out, true);
        for (String level : Logging.LEVELS) assertTrue(Logging.checkLevel(level.toUpperCase(java.util.Locale.ROOT), "vmm", err));
        assertEquals("", out.toString());
        assertFalse(Logging.checkLevel("loud", "vmm demo", err));
        assertEquals("vmm demo: --log-level: expected error, warn, info, debug or trace, got 'loud'", out.toString().strip());
    }
}

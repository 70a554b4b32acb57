// Command testprog is the process inside reeve's test containers. It is
// built as a static binary (CGO_ENABLED=0) and put at /testprog in images
// pushed by package reeve.dev/reeve/internal/testimage; the image's
// entrypoint is ["/testprog"].
//
// With no arguments it runs as a service: it prints
// "testprog <VERSION> started" to stdout and then sleeps until it gets
// SIGTERM or SIGINT, prints "testprog stopping" and exits 0. VERSION is
// $TESTPROG_VERSION, else the trimmed content of the file /version, else
// "dev". Environment variables change this behaviour (durations use Go
// syntax such as "500ms" or "2s"; a bad value makes testprog exit 2):
//
//	TESTPROG_IGNORE_TERM=1        ignore SIGTERM and SIGINT (printing
//	                              "testprog ignoring <signal>"), so a stop must kill
//	TESTPROG_EXIT=<code>          exit with <code> after TESTPROG_EXIT_AFTER
//	TESTPROG_EXIT_AFTER=<dur>     (default 0) and after finite TESTPROG_LINES
//	                              output is done; prints "testprog exiting with code <code>"
//	TESTPROG_LINES=<n>            print "line 1", "line 2", ... to stdout, <n>
//	                              lines (0 = forever) ...
//	TESTPROG_LINE_INTERVAL=<dur>  ... one every <dur> (default 0), on average:
//	                              paced against the start time
//	TESTPROG_STDERR=1             with TESTPROG_LINES: odd lines to stdout, even
//	                              lines to stderr
//	TESTPROG_LINE_BYTES=<n>       with TESTPROG_LINES: pad each line with "x"
//	                              to <n> bytes (without its newline), e.g.
//	                              "line 1 xxxx…" (lines longer than a log keeps)
//	TESTPROG_WRITE=<path>=<text>  at start, append <text>+"\n" to <path>,
//	                              creating its directories (e.g. in a volume)
//	TESTPROG_STARTLOG=<path>      at start, append "<name> <RFC3339Nano time>\n"
//	                              to <path>; <name> is $TESTPROG_NAME, else the
//	                              host name (checks start order across containers)
//	TESTPROG_HANDOVER=<path>      create <path> after TESTPROG_HANDOVER_AFTER
//	TESTPROG_HANDOVER_AFTER=<dur> (default 0): the handover-complete signal
//	TESTPROG_HEALTHY_AFTER=<dur>  create the health file after <dur>
//	TESTPROG_HEALTH_FILE=<path>   the health file (default /tmp/healthy)
//	TESTPROG_LISTEN=<addr>        serve HTTP on <addr> (e.g. ":8080"): every
//	                              request gets 200 "ok <VERSION>"
//
// The start actions (TESTPROG_WRITE, TESTPROG_STARTLOG) run before the
// "started" line is printed.
//
// With arguments it runs one command and exits:
//
//	testprog health           exit 0 if the health file exists, else 1
//	                          (healthcheck: CMD ["/testprog","health"])
//	testprog cat <path>       print the file; exit 1 if it cannot be read
//	testprog ls <dir>         print the names in <dir>, one a line, sorted;
//	                          exit 1 if it cannot be read
//	testprog sleep <dur>      sleep, then exit 0
//
// Unknown commands exit 2.
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		os.Exit(command(os.Args[1:]))
	}
	serve()
}

// command runs a one-shot command and returns the exit code.
func command(args []string) int {
	switch {
	case args[0] == "health" && len(args) == 1:
		if _, err := os.Stat(healthFile()); err != nil {
			fmt.Fprintln(os.Stderr, "testprog: not healthy:", err)
			return 1
		}
		return 0
	case args[0] == "cat" && len(args) == 2:
		b, err := os.ReadFile(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "testprog:", err)
			return 1
		}
		os.Stdout.Write(b)
		return 0
	case args[0] == "ls" && len(args) == 2:
		entries, err := os.ReadDir(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "testprog:", err)
			return 1
		}
		for _, e := range entries {
			fmt.Println(e.Name())
		}
		return 0
	case args[0] == "sleep" && len(args) == 2:
		d, err := time.ParseDuration(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "testprog:", err)
			return 2
		}
		time.Sleep(d)
		return 0
	}
	fmt.Fprintf(os.Stderr, "testprog: unknown command %q; usage: testprog [health | cat PATH | ls DIR | sleep DURATION]\n", strings.Join(args, " "))
	return 2
}

// serve is the default mode: a long-running service configured by the
// environment.
func serve() {
	// Register for signals first: as PID 1 in a container, a signal
	// without a handler is ignored.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	version := version()
	if w := os.Getenv("TESTPROG_WRITE"); w != "" {
		path, text, ok := strings.Cut(w, "=")
		if !ok {
			fail("TESTPROG_WRITE=%q: want <path>=<content>", w)
		}
		appendFile(path, text+"\n")
	}
	if p := os.Getenv("TESTPROG_STARTLOG"); p != "" {
		name := os.Getenv("TESTPROG_NAME")
		if name == "" {
			name, _ = os.Hostname()
		}
		appendFile(p, name+" "+time.Now().Format(time.RFC3339Nano)+"\n")
	}
	fmt.Printf("testprog %s started\n", version)

	if addr := os.Getenv("TESTPROG_LISTEN"); addr != "" {
		go func() {
			err := http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintf(w, "ok %s", version)
			}))
			fail("listen on %s: %v", addr, err)
		}()
	}
	if p := os.Getenv("TESTPROG_HANDOVER"); p != "" {
		after := duration("TESTPROG_HANDOVER_AFTER")
		go func() {
			time.Sleep(after)
			appendFile(p, "")
		}()
	}
	if os.Getenv("TESTPROG_HEALTHY_AFTER") != "" {
		after := duration("TESTPROG_HEALTHY_AFTER")
		go func() {
			time.Sleep(after)
			appendFile(healthFile(), "")
		}()
	}

	var linesDone sync.WaitGroup
	if s := os.Getenv("TESTPROG_LINES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			fail("TESTPROG_LINES=%q: want a number >= 0", s)
		}
		interval := duration("TESTPROG_LINE_INTERVAL")
		toStderr := os.Getenv("TESTPROG_STDERR") == "1"
		pad := 0
		if s := os.Getenv("TESTPROG_LINE_BYTES"); s != "" {
			if pad, err = strconv.Atoi(s); err != nil || pad < 0 {
				fail("TESTPROG_LINE_BYTES=%q: want a number >= 0", s)
			}
		}
		if n > 0 {
			linesDone.Add(1)
		}
		go func() {
			start := time.Now()
			for i := 1; n == 0 || i <= n; i++ {
				out := os.Stdout
				if toStderr && i%2 == 0 {
					out = os.Stderr
				}
				line := fmt.Sprintf("line %d", i)
				if len(line) < pad {
					line += " " + strings.Repeat("x", pad-len(line)-1)
				}
				fmt.Fprintln(out, line)
				if n == 0 || i < n {
					// Paced against the start: a sleep shorter than the
					// timer's resolution would slow the rate down.
					time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
				}
			}
			linesDone.Done()
		}()
	}
	if s := os.Getenv("TESTPROG_EXIT"); s != "" {
		code, err := strconv.Atoi(s)
		if err != nil {
			fail("TESTPROG_EXIT=%q: want a number", s)
		}
		after := duration("TESTPROG_EXIT_AFTER")
		go func() {
			time.Sleep(after)
			linesDone.Wait()
			fmt.Printf("testprog exiting with code %d\n", code)
			os.Exit(code)
		}()
	}

	ignore := os.Getenv("TESTPROG_IGNORE_TERM") == "1"
	for sig := range sigs {
		if ignore {
			fmt.Printf("testprog ignoring %v\n", sig)
			continue
		}
		fmt.Println("testprog stopping")
		os.Exit(0)
	}
}

func version() string {
	if v := os.Getenv("TESTPROG_VERSION"); v != "" {
		return v
	}
	if b, err := os.ReadFile("/version"); err == nil {
		if v := strings.TrimSpace(string(b)); v != "" {
			return v
		}
	}
	return "dev"
}

func healthFile() string {
	if p := os.Getenv("TESTPROG_HEALTH_FILE"); p != "" {
		return p
	}
	return "/tmp/healthy"
}

// duration parses the environment variable key; unset means 0.
func duration(key string) time.Duration {
	s := os.Getenv(key)
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		fail("%s=%q: %v", key, s, err)
	}
	return d
}

// appendFile appends text to path, creating the file and its directories.
func appendFile(path, text string) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		fail("%v", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fail("%v", err)
	}
	if _, err := f.WriteString(text); err != nil {
		fail("%v", err)
	}
	if err := f.Close(); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "testprog: "+format+"\n", args...)
	os.Exit(2)
}

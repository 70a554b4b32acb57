// Package example is the small app `reeve dev` installs: a worker that counts
// into a volume, and a web page that shows the count and the device's
// identity. Both run from the reeve binary itself (`reeve example-app`), so
// the example needs no image from the internet.
package example

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"html"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed docker-compose.yml
var composeTemplate string

// ComposeFile returns the example's compose file for the given image.
func ComposeFile(image string) []byte {
	return []byte(strings.ReplaceAll(composeTemplate, "{{IMAGE}}", image))
}

// Run runs one of the example's services: "web" or "worker".
func Run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: reeve example-app web|worker")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch args[0] {
	case "web":
		fs := flag.NewFlagSet("web", flag.ContinueOnError)
		listen := fs.String("listen", ":8080", "address to serve on")
		data := fs.String("data", "/data", "directory holding the worker's count")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return web(ctx, *listen, *data)
	case "worker":
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		data := fs.String("data", "/data", "directory to count into")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return worker(ctx, *data)
	case "lines":
		fs := flag.NewFlagSet("lines", flag.ContinueOnError)
		count := fs.Int("count", 1000, "lines to print")
		rate := fs.Int("rate", 1000, "lines a second (0: as fast as it can)")
		delay := fs.Duration("delay", 0, "wait this long before the first line")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return lines(ctx, *count, *rate, *delay)
	}
	return fmt.Errorf("unknown example service %q: use web, worker or lines", args[0])
}

// lines prints "line 1" … "line <count>" at rate lines a second, then
// waits to be stopped: the load of the log benchmark.
func lines(ctx context.Context, count, rate int, delay time.Duration) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(delay):
	}
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	start := time.Now()
	for i := 1; i <= count; i++ {
		fmt.Fprintf(out, "line %d\n", i)
		if rate <= 0 || i%100 != 0 {
			continue
		}
		// Paced in steps of 100 lines, each flushed when it is due.
		if err := out.Flush(); err != nil {
			return err
		}
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(due)):
		}
	}
	if err := out.Flush(); err != nil {
		return err
	}
	fmt.Println("lines done")
	<-ctx.Done()
	return nil
}

func worker(ctx context.Context, dir string) error {
	path := filepath.Join(dir, "count")
	n := 0
	if b, err := os.ReadFile(path); err == nil {
		n, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	fmt.Printf("worker started at count %d\n", n)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Println("worker stopping")
			return nil
		case <-t.C:
		}
		n++
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(n)), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
		if n%60 == 0 {
			fmt.Printf("count %d\n", n)
		}
	}
}

func web(ctx context.Context, listen, dir string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		count := "not yet"
		if b, err := os.ReadFile(filepath.Join(dir, "count")); err == nil {
			count = strings.TrimSpace(string(b))
		}
		greeting := os.Getenv("GREETING")
		if greeting == "" {
			greeting = "Hello"
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html><title>reeve example</title><h1>%s</h1>"+
			"<p>device <code>%s</code>, app <code>%s</code>, service <code>%s</code>, release <code>%s</code></p>"+
			"<p>the worker has counted to <b>%s</b></p>\n",
			html.EscapeString(greeting), html.EscapeString(os.Getenv("REEVE_DEVICE_UUID")),
			html.EscapeString(os.Getenv("REEVE_APP_NAME")), html.EscapeString(os.Getenv("REEVE_SERVICE_NAME")),
			html.EscapeString(os.Getenv("REEVE_RELEASE")), html.EscapeString(count))
	})
	srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Printf("web serving on %s\n", listen)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

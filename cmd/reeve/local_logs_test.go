package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// reeve local logs asks the agent for what the flags say and prints each
// line as reeve logs does.
func TestLocalLogs(t *testing.T) {
	var query string
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/local/logs" || r.Header.Get("Authorization") != "Bearer k" {
			http.Error(w, `{"error":{"code":"not_found","message":"no"}}`, http.StatusNotFound)
			return
		}
		query = r.URL.RawQuery
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(`{"seq":1,"timestamp":"2026-11-23T15:28:44.123Z","service":"web","message":"listening"}` + "\n\n" +
			`{"seq":2,"timestamp":"2026-11-23T15:28:45Z","service":"web","system":true,"message":"Killed service web"}` + "\n"))
	}))
	defer agent.Close()
	out, err := run(t, "local", "logs", "--device", agent.URL, "--api-key", "k", "--service", "web", "--tail", "5")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(query, "service=web") || !strings.Contains(query, "tail=5") || !strings.Contains(query, "follow=false") {
		t.Errorf("query %q", query)
	}
	for _, want := range []string{"[web] listening", "[web system] Killed service web"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "local", "logs", "--device", agent.URL, "--api-key", "k", "--json")
	if err != nil || !strings.Contains(out, `"message":"Killed service web"`) {
		t.Errorf("--json: %v\n%s", err, out)
	}
	if _, err := run(t, "local", "logs", "--device", agent.URL, "--api-key", "k", "--tail", "-1"); err == nil || exitCode(err) != 2 {
		t.Errorf("--tail -1: %v, want a usage error", err)
	}
}

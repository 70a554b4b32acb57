package localapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/logship"
)

func logRecs(lines ...reeve.LogLine) []logship.Record {
	var out []logship.Record
	for _, l := range lines {
		out = append(out, logship.Record{LogLine: l})
	}
	return out
}

func TestLocalLogs(t *testing.T) {
	tail := logship.NewTail(100)
	tail.Add(logRecs(
		reeve.LogLine{Service: "web", Message: "w1"},
		reeve.LogLine{Service: "db", Message: "d1"},
		reeve.LogLine{Service: "web", System: true, Message: "Started service web"},
		reeve.LogLine{Service: "web", Message: "w2"},
	))
	srv := httptest.NewServer(New(newFake(), Options{Logs: tail}))
	defer srv.Close()
	c := NewClient(srv.URL).WithKey(devKey)
	ctx := context.Background()
	read := func(q LogQuery) []string {
		t.Helper()
		var got []string
		if err := c.Logs(ctx, q, func(l reeve.LogLine) error { got = append(got, l.Message); return nil }); err != nil {
			t.Fatalf("Logs %+v: %v", q, err)
		}
		return got
	}
	for _, tc := range []struct {
		q    LogQuery
		want string
	}{
		{LogQuery{Tail: -1}, "[w1 d1 Started service web w2]"},
		{LogQuery{Tail: 2}, "[Started service web w2]"},
		{LogQuery{Tail: -1, Services: []string{"web"}}, "[w1 Started service web w2]"},
		{LogQuery{Tail: 1, Services: []string{"db"}}, "[d1]"},
		{LogQuery{Tail: -1, System: true}, "[Started service web]"},
		{LogQuery{Tail: 0}, "[]"},
	} {
		if got := read(tc.q); fmt.Sprint(got) != tc.want {
			t.Errorf("%+v: %v, want %s", tc.q, got, tc.want)
		}
	}

	// Following: the recent lines, then what comes.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Logs(fctx, LogQuery{Tail: 1, Follow: true, Services: []string{"web"}}, func(l reeve.LogLine) error {
			got <- l.Message
			return nil
		})
	}()
	if m := <-got; m != "w2" {
		t.Fatalf("first followed line %q", m)
	}
	// The follower is registered once the recent lines are sent; lines
	// added from here on arrive.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tail.Add(logRecs(reeve.LogLine{Service: "db", Message: "d2"}, reeve.LogLine{Service: "web", Message: "w3"}))
		select {
		case m := <-got:
			if m != "w3" {
				t.Fatalf("followed %q, want w3 (db filtered out)", m)
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Logs after cancel: %v", err)
			}
			return
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no followed line")
			}
		}
	}
}

func TestLocalLogsBadInput(t *testing.T) {
	h := New(newFake(), Options{Logs: logship.NewTail(10)})
	for _, path := range []string{"/v2/local/logs?tail=-3", "/v2/local/logs?tail=x", "/v2/local/logs?follow=maybe"} {
		resp, body := do(t, h, "GET", path+"&apikey="+devKey, "", "")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	resp, _ := do(t, h, "GET", "/v2/local/logs?apikey="+a1Key, "", "")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("an app key reads the device's log: %d", resp.StatusCode)
	}
	resp, _ = do(t, New(newFake(), Options{}), "GET", "/v2/local/logs?apikey="+devKey, "", "")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("no log view: %d", resp.StatusCode)
	}
}

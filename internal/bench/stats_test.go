package bench

import (
	"context"
	"testing"
	"time"

	"reeve.dev/reeve/internal/compose"
)

func TestMedianP90(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		var out []time.Duration
		for _, n := range ns {
			out = append(out, time.Duration(n)*time.Millisecond)
		}
		return out
	}
	if got := median(ms(3, 1, 2)); got != 2*time.Millisecond {
		t.Errorf("median of 3,1,2 = %s", got)
	}
	if got := median(ms(4, 1, 3, 2)); got != 2500*time.Microsecond {
		t.Errorf("median of 4,1,3,2 = %s", got)
	}
	if got := p90(ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)); got != 9*time.Millisecond {
		t.Errorf("p90 of 1..10 = %s", got)
	}
	if got := p90(ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)); got != 18*time.Millisecond {
		t.Errorf("p90 of 1..20 = %s", got)
	}
	if got := p90(ms(7)); got != 7*time.Millisecond {
		t.Errorf("p90 of 7 = %s", got)
	}
}

// The benchmark's compose file must be a release reeve accepts, with every
// service on the network, restarting always.
func TestComposeFileLoads(t *testing.T) {
	rel, err := compose.Load(context.Background(), composeFile("127.0.0.1:5000/reeve/bench:abc", 3), compose.Options{ProjectName: "bench"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rel.Services) != 3 || len(rel.Networks) != 1 {
		t.Fatalf("%d services, %d networks; want 3 and 1", len(rel.Services), len(rel.Networks))
	}
	for name, svc := range rel.Services {
		if svc.Environment["BENCH_SERVICE"] != name {
			t.Errorf("%s: environment %v", name, svc.Environment)
		}
		if svc.Composition.Restart != "always" {
			t.Errorf("%s: restart %q, want always", name, svc.Composition.Restart)
		}
	}
}

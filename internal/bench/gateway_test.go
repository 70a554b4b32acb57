package bench

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve/internal/testimage"
)

// TestGateway runs `reeve bench gateway` small against the real engine: 10
// boards. It checks what was measured, not how fast.
func TestGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("builds reeve and runs an agent and a gateway on the engine: not in -short")
	}
	testimage.RequireDocker(t)
	bin := filepath.Join(t.TempDir(), "reeve")
	gobuild := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "reeve.dev/reeve/cmd/reeve")
	gobuild.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := gobuild.CombinedOutput(); err != nil {
		t.Fatalf("build the reeve binary: %v\n%s", err, msg)
	}
	var out bytes.Buffer
	res, err := Gateway(t.Context(), GatewayOptions{Binary: bin, Devices: 10, FirmwareBytes: 64 << 10, ChunkDelay: time.Millisecond}, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.Devices != 10 || res.Installed <= 0 || res.Reported < res.Installed || res.Bare <= 0 || res.GatewayRSSBefore <= 0 || res.GatewayRSSPeak <= 0 {
		t.Errorf("result %+v", res)
	}
	for _, want := range []string{"all 10 installed", "all reported to the server", "gateway RSS before / peak"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report has no %q", want)
		}
	}
}

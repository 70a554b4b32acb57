package docker_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/testimage"
)

// volumeSetup is what the volume tests share: an engine, a runtime and an
// image fetched for helper containers.
type volumeSetup struct {
	cli   *client.Client
	rt    *docker.Runtime
	image string
}

func newVolumeSetup(t *testing.T, repo string) volumeSetup {
	t.Helper()
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, repo, "v1")
	if err := rt.Fetch(testCtx(t), image, nil); err != nil {
		t.Fatal(err)
	}
	return volumeSetup{cli: cli, rt: rt, image: image}
}

func (s volumeSetup) mk(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	if _, err := s.cli.VolumeCreate(testCtx(t), client.VolumeCreateOptions{Name: name, Labels: labels}); err != nil {
		t.Fatal(err)
	}
}

func (s volumeSetup) listed(t *testing.T, uuid, name string) (string, bool) {
	t.Helper()
	snap, err := s.rt.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range snap.Volumes {
		if v.AppUUID == uuid && v.Name == name {
			return v.ConfigHash, true
		}
	}
	return "", false
}

func volumeLabels(uuid, name string, v reeve.Volume) map[string]string {
	l := map[string]string{docker.LabelManaged: "true", docker.LabelAppUUID: uuid, docker.LabelVolumeName: name, docker.LabelConfigHash: v.ConfigHash()}
	for k, x := range v.Labels {
		l[k] = x
	}
	return l
}

// A ReplaceVolume A→B cut after step 2 leaves a complete backup of A and no
// volume; the target is rolled back to A, and CreateVolume(A) is cut while
// it restores: the volume has hash A but is empty. It must not be listed as
// ready, and the next CreateVolume must restore the data, not drop the
// backup as stale.
func TestInterruptedRestoreKeepsBackup(t *testing.T) {
	s := newVolumeSetup(t, "reeve/restore")
	ctx := testCtx(t)
	uuid := app(t, s.cli)
	defA := reeve.Volume{Labels: map[string]string{"generation": "1"}}
	vol := uuid + "_data"
	backup := docker.BackupName(vol)
	s.mk(t, backup, map[string]string{
		docker.LabelBackupOf: vol, docker.LabelBackupHash: defA.ConfigHash(), docker.LabelAppUUID: uuid,
		docker.LabelBackupID: "b0b0",
	})
	writeVolume(t, s.cli, s.image, backup, map[string]string{"a.txt": "alpha"})
	// What restore made before the crash: the volume with hash A, empty.
	l := volumeLabels(uuid, "data", defA)
	l[docker.LabelRestoredFrom] = "b0b0"
	s.mk(t, vol, l)
	removeHelpers(t, s.cli, s.image)

	if h, ok := s.listed(t, uuid, "data"); ok {
		t.Errorf("Snapshot lists the half-restored volume with hash %s", h)
	}
	spec := reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: defA}
	if err := s.rt.CreateVolume(ctx, spec); err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	if diff := cmp.Diff(map[string]string{"a.txt": "600 1234:5678 alpha"}, volumeFiles(t, s.cli, s.image, vol)); diff != "" {
		t.Errorf("volume content after CreateVolume (-want +got):\n%s", diff)
	}
	if h, ok := s.listed(t, uuid, "data"); !ok || h != defA.ConfigHash() {
		t.Errorf("after CreateVolume: listed %v hash %s, want %s", ok, h, defA.ConfigHash())
	}
	if _, err := s.cli.VolumeInspect(ctx, backup, client.VolumeInspectOptions{}); err == nil {
		t.Error("the backup is still there after the restore completed")
	}
	// The restored-from label left on the volume is harmless: a later
	// replace keeps the data.
	removeHelpers(t, s.cli, s.image)
	defB := reeve.Volume{Labels: map[string]string{"generation": "2"}}
	if err := s.rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: defB}); err != nil {
		t.Fatalf("ReplaceVolume: %v", err)
	}
	if diff := cmp.Diff(map[string]string{"a.txt": "600 1234:5678 alpha"}, volumeFiles(t, s.cli, s.image, vol)); diff != "" {
		t.Errorf("volume content after ReplaceVolume (-want +got):\n%s", diff)
	}
}

// A release volume whose name is another volume's old backup name
// (data_reeve-backup) is the user's, and ReplaceVolume of "data" must leave
// it alone; so must it a foreign volume that has the backup's name.
func TestBackupNameNeverAReleaseVolume(t *testing.T) {
	s := newVolumeSetup(t, "reeve/backupname")
	ctx := testCtx(t)
	uuid := app(t, s.cli)
	def1 := reeve.Volume{Labels: map[string]string{"generation": "1"}}
	def2 := reeve.Volume{Labels: map[string]string{"generation": "2"}}
	for _, n := range []string{"data", "data_reeve-backup"} {
		if err := s.rt.CreateVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: n, Volume: def1}); err != nil {
			t.Fatal(err)
		}
		writeVolume(t, s.cli, s.image, uuid+"_"+n, map[string]string{"who.txt": n})
	}
	removeHelpers(t, s.cli, s.image)
	if docker.BackupName(uuid+"_data") == uuid+"_data_reeve-backup" {
		t.Error("the backup of data has the engine name of release volume data_reeve-backup")
	}
	if err := s.rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: def2}); err != nil {
		t.Fatalf("ReplaceVolume: %v", err)
	}
	for _, n := range []string{"data", "data_reeve-backup"} {
		want := map[string]string{"who.txt": "600 1234:5678 " + n}
		if diff := cmp.Diff(want, volumeFiles(t, s.cli, s.image, uuid+"_"+n)); diff != "" {
			t.Errorf("volume %s (-want +got):\n%s", n, diff)
		}
	}
	removeHelpers(t, s.cli, s.image)

	// A foreign volume with the backup's name: refuse, touch nothing.
	foreign := docker.BackupName(uuid + "_data")
	s.mk(t, foreign, map[string]string{docker.LabelAppUUID: uuid, "com.example": "mine"})
	writeVolume(t, s.cli, s.image, foreign, map[string]string{"mine.txt": "mine"})
	removeHelpers(t, s.cli, s.image)
	if err := s.rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: def1}); err == nil {
		t.Error("ReplaceVolume used a foreign volume as its backup")
	}
	if diff := cmp.Diff(map[string]string{"mine.txt": "600 1234:5678 mine"}, volumeFiles(t, s.cli, s.image, foreign)); diff != "" {
		t.Errorf("foreign volume (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"who.txt": "600 1234:5678 data"}, volumeFiles(t, s.cli, s.image, uuid+"_data")); diff != "" {
		t.Errorf("volume data after the refused replace (-want +got):\n%s", diff)
	}
	removeHelpers(t, s.cli, s.image)
	if err := s.rt.RemoveVolume(ctx, uuid, "data"); err != nil {
		t.Fatalf("RemoveVolume: %v", err)
	}
	if _, err := s.cli.VolumeInspect(ctx, foreign, client.VolumeInspectOptions{}); err != nil {
		t.Errorf("RemoveVolume removed a foreign volume with the backup's name: %v", err)
	}
}

// A helper container created by an attempt cut short can land in the
// engine after the attempt gave up, and the engine makes the volume it
// mounts: a volume at the backup's name without labels. It holds nothing
// that is not in the original, so ReplaceVolume drops it and goes on.
func TestReplaceVolumeDropsUnlabelledBackupLeftover(t *testing.T) {
	s := newVolumeSetup(t, "reeve/leftover")
	ctx := testCtx(t)
	uuid := app(t, s.cli)
	def1 := reeve.Volume{Labels: map[string]string{"generation": "1"}}
	if err := s.rt.CreateVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: def1}); err != nil {
		t.Fatal(err)
	}
	vol := uuid + "_data"
	writeVolume(t, s.cli, s.image, vol, map[string]string{"a.txt": "alpha"})
	leftover := docker.BackupName(vol)
	s.mk(t, leftover, nil)
	writeVolume(t, s.cli, s.image, leftover, map[string]string{"a.txt": "half"})
	removeHelpers(t, s.cli, s.image)

	def2 := reeve.Volume{Labels: map[string]string{"generation": "2"}}
	if err := s.rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: def2}); err != nil {
		t.Fatalf("ReplaceVolume over an unlabelled leftover: %v", err)
	}
	if diff := cmp.Diff(map[string]string{"a.txt": "600 1234:5678 alpha"}, volumeFiles(t, s.cli, s.image, vol)); diff != "" {
		t.Errorf("volume content (-want +got):\n%s", diff)
	}
	if h, ok := s.listed(t, uuid, "data"); !ok || h != def2.ConfigHash() {
		t.Errorf("after ReplaceVolume: listed %v hash %s, want %s", ok, h, def2.ConfigHash())
	}
	if _, err := s.cli.VolumeInspect(ctx, leftover, client.VolumeInspectOptions{}); err == nil {
		t.Error("a backup volume is still there after the replace completed")
	}
}

// rootMeta is the owner and mode of a volume's root directory.
func rootMeta(t *testing.T, cli *client.Client, image, vol string) string {
	t.Helper()
	id := helper(t, cli, image, vol)
	res, err := cli.CopyFromContainer(testCtx(t), id, client.CopyFromContainerOptions{SourcePath: "/v"})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Content.Close()
	h, err := tar.NewReader(res.Content).Next()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%o %d:%d", h.Mode&0o7777, h.Uid, h.Gid)
}

func TestReplaceVolumeKeepsRootOwnerAndMode(t *testing.T) {
	s := newVolumeSetup(t, "reeve/rootmeta")
	ctx := testCtx(t)
	uuid := app(t, s.cli)
	def1 := reeve.Volume{Labels: map[string]string{"generation": "1"}}
	def2 := reeve.Volume{Labels: map[string]string{"generation": "2"}}
	if err := s.rt.CreateVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: def1}); err != nil {
		t.Fatal(err)
	}
	vol := uuid + "_data"
	// chown 1000:1000, chmod 0700 the root, as a non-root service's
	// entrypoint would.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "v/", Mode: 0o700, Uid: 1000, Gid: 1000})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "v/f", Mode: 0o600, Uid: 1000, Gid: 1000, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	if _, err := s.cli.CopyToContainer(ctx, helper(t, s.cli, s.image, vol), client.CopyToContainerOptions{DestinationPath: "/", Content: &buf}); err != nil {
		t.Fatal(err)
	}
	if got := rootMeta(t, s.cli, s.image, vol); got != "700 1000:1000" {
		t.Fatalf("setup: root is %s", got)
	}
	removeHelpers(t, s.cli, s.image)
	if err := s.rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: def2}); err != nil {
		t.Fatal(err)
	}
	if got := rootMeta(t, s.cli, s.image, vol); got != "700 1000:1000" {
		t.Errorf("after ReplaceVolume the volume root is %s, want 700 1000:1000", got)
	}
	if diff := cmp.Diff(map[string]string{"f": "600 1000:1000 x"}, volumeFiles(t, s.cli, s.image, vol)); diff != "" {
		t.Errorf("content (-want +got):\n%s", diff)
	}
}

// When main is recreated, a sidecar with network_mode service:main still
// points at the old container: Snapshot reports it changed (config hash
// "") so that the planner recreates it, and starting it does not say the
// sidecar itself is gone.
func TestNetworkModeServiceMainRecreated(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/netmode2", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	uuid := app(t, cli)
	mainSpec := func(commit, v string) reeve.ServiceSpec {
		return reeve.ServiceSpec{AppUUID: uuid, Commit: commit, ServiceName: "main", Service: reeve.Service{
			Image: image, Environment: map[string]string{"TESTPROG_LISTEN": ":8080", "V": v},
		}}
	}
	sideSpec := func(commit string) reeve.ServiceSpec {
		return reeve.ServiceSpec{AppUUID: uuid, Commit: commit, ServiceName: "sidecar", Service: reeve.Service{
			Image: image, Composition: reeve.Composition{NetworkMode: "service:main"},
		}}
	}
	sideHash := func() (string, bool) {
		snap, err := rt.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range snap.Containers {
			if c.AppUUID == uuid && c.ServiceName == "sidecar" {
				return c.ConfigHash, true
			}
		}
		return "", false
	}
	want := sideSpec("c1").Service.ConfigHash()

	main1, err := rt.Create(ctx, mainSpec("c1", "1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, main1); err != nil {
		t.Fatal(err)
	}
	side, err := rt.Create(ctx, sideSpec("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, side); err != nil {
		t.Fatal(err)
	}
	if h, _ := sideHash(); h != want {
		t.Fatalf("sidecar on the current main: hash %q, want %q", h, want)
	}

	// Release c2 changes main; the sidecar keeps its definition (renamed).
	main2, err := rt.Create(ctx, mainSpec("c2", "2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.UpdateMetadata(ctx, side, sideSpec("c2")); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, main2); err != nil {
		t.Fatal(err)
	}
	if h, ok := sideHash(); !ok || h != "" {
		t.Errorf("sidecar on the old main while the new one runs: hash %q (listed %v), want \"\"", h, ok)
	}
	// The old main goes.
	if err := rt.Stop(ctx, side, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := rt.Remove(ctx, main1); err != nil {
		t.Fatal(err)
	}
	if h, ok := sideHash(); !ok || h != "" {
		t.Errorf("sidecar on a removed main: hash %q (listed %v), want \"\"", h, ok)
	}
	err = rt.Start(ctx, side)
	if err == nil {
		t.Fatal("starting a sidecar whose main is gone succeeded")
	}
	if errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Start of a sidecar whose main is gone: %v: says the sidecar is not found", err)
	}
	t.Logf("start error: %v", err)
	// Recreated, it works.
	if err := rt.Remove(ctx, side); err != nil {
		t.Fatal(err)
	}
	side2, err := rt.Create(ctx, sideSpec("c2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, side2); err != nil {
		t.Fatal(err)
	}
	if h, _ := sideHash(); h != want {
		t.Errorf("recreated sidecar: hash %q, want %q", h, want)
	}
	if got := inspect(t, cli, side2).HostConfig.NetworkMode; got != container.NetworkMode("container:"+main2) {
		t.Errorf("recreated sidecar NetworkMode %s, want container:%s", got, main2)
	}
}

// Cleanup must not remove images that merely have no tag: an image pulled
// by digest only is in use by the user (or by a release pinned by digest).
func TestCleanupKeepsImagesPulledByDigest(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	ref := push(t, reg, rt, "reeve/bydigest", "v1")
	ctx := testCtx(t)
	repo := ref[:strings.LastIndex(ref, ":")]
	pinned := repo + "@" + reg.Digest(t, ref)
	if err := rt.Fetch(ctx, pinned, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		rt.RemoveImage(c, pinned)
	})
	res, err := cli.ImageInspect(ctx, pinned)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.RepoTags) != 0 {
		t.Fatalf("setup: the image has tags %v", res.RepoTags)
	}
	if err := rt.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ImageInspect(ctx, pinned); err != nil {
		t.Errorf("Cleanup removed an image pulled by digest: %v", err)
	}
}

// A helper left by this namespace's previous agent (a crash) goes at the
// next Cleanup, not 10 minutes later.
func TestCleanupRemovesPredecessorHelpersAtOnce(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	ns := "dkt" + randomHex(3)
	rt := newRuntime(t, docker.Options{Namespace: ns})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/helpers", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	mk := func(owner string) string {
		res, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
			Config: &container.Config{Image: image, Labels: map[string]string{docker.LabelHelper: "true", docker.LabelHelperOwner: owner}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			c, cancel := cleanupCtx()
			defer cancel()
			cli.ContainerRemove(c, res.ID, client.ContainerRemoveOptions{Force: true})
		})
		return res.ID
	}
	mine, theirs := mk(ns), mk(ns+"y")
	if err := rt.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ContainerInspect(ctx, mine, client.ContainerInspectOptions{}); err == nil {
		t.Error("Cleanup left a helper its namespace's previous agent made")
	}
	if _, err := cli.ContainerInspect(ctx, theirs, client.ContainerInspectOptions{}); err != nil {
		t.Errorf("Cleanup removed a fresh helper of another namespace: %v", err)
	}
}

// Helper containers are made from reeve's own helper image, loaded when
// missing, not from an image on the engine: a helper made from someone
// else's image would hold it while it lives, and its owner's removal of it
// would be refused.
func TestHelperImageIsReevesOwn(t *testing.T) {
	testimage.RequireDocker(t)
	ctx := testCtx(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	// Gone first where nothing uses it (another package's test may).
	_, _ = cli.ImageRemove(ctx, docker.HelperImage, client.ImageRemoveOptions{})
	got, err := docker.HelperImageOf(ctx, rt)
	if err != nil {
		t.Fatal(err)
	}
	if got != docker.HelperImage {
		t.Fatalf("helper image %s, want %s", got, docker.HelperImage)
	}
	res, err := cli.ImageInspect(ctx, docker.HelperImage)
	if err != nil {
		t.Fatalf("the helper image is not on the engine: %v", err)
	}
	if res.Size > 1<<10 {
		t.Errorf("the helper image takes %d bytes, want next to nothing", res.Size)
	}
	// A copy through helpers made from it works.
	uuid := app(t, cli)
	v1 := reeve.Volume{Labels: map[string]string{"generation": "1"}}
	if err := rt.CreateVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: v1}); err != nil {
		t.Fatal(err)
	}
	v2 := reeve.Volume{Labels: map[string]string{"generation": "2"}}
	if err := rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: v2}); err != nil {
		t.Fatalf("ReplaceVolume through the helper image: %v", err)
	}
}

// A volume someone else's container uses is not removed, and that
// container is left alone: the error says so, after looking again a few
// times for helpers that land late.
func TestRemoveVolumeInUseKeepsTheUser(t *testing.T) {
	s := newVolumeSetup(t, "reeve/inuse")
	ctx := testCtx(t)
	uuid := app(t, s.cli)
	if err := s.rt.CreateVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data"}); err != nil {
		t.Fatal(err)
	}
	user := helper(t, s.cli, s.image, uuid+"_data") // a plain container, not reeve's helper
	err := s.rt.RemoveVolume(ctx, uuid, "data")
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("RemoveVolume of a volume in use: %v, want an error saying it is in use", err)
	}
	if _, err := s.cli.ContainerInspect(ctx, user, client.ContainerInspectOptions{}); err != nil {
		t.Errorf("the container using the volume was touched: %v", err)
	}
	if _, ok := s.listed(t, uuid, "data"); !ok {
		t.Error("the volume in use is gone from Snapshot")
	}
}

package gateway

import "testing"

func TestStoreKeepsOneRecordPerLocalID(t *testing.T) {
	st, err := openStore(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	ctx := t.Context()
	if err := st.ensure(ctx, "u1", 1, "board-1"); err != nil {
		t.Fatal(err)
	}
	if err := st.set(ctx, "u1", "attempts", 2); err != nil {
		t.Fatal(err)
	}
	// The same board under a new UUID (removed and provisioned again while
	// the gateway missed the hook): the old record goes.
	if err := st.ensure(ctx, "u2", 1, "board-1"); err != nil {
		t.Fatal(err)
	}
	recs, err := st.records(ctx)
	if err != nil || len(recs) != 1 || recs["u2"].LocalID != "board-1" || recs["u2"].Attempts != 0 {
		t.Fatalf("records %+v, %v: want only u2, fresh", recs, err)
	}
	if err := st.set(ctx, "u2", "status; DROP TABLE devices", 1); err == nil {
		t.Error("a column outside the record's fields was written")
	}
}

// Package state keeps vmscope's poll state in a bbolt file: per image, the
// file index (inode, paths, size, times, extents digest, content sha256,
// last verdict), the block → inode index (the runs of each file), the
// dirty-source cursor (source, chunk hashes) and the digest of the rules.
//
// Why bbolt: one pure-Go file with ACID transactions and no cgo (the
// scanner already links libyara; a second C library and its build flags
// are not worth it for a key/value state). A poll is saved in ONE
// transaction after it succeeds, so a poll that dies changes nothing and
// the next one redoes it. Indexes are gob-encoded: guest names are bytes,
// not always UTF-8, and JSON would mangle them. A state file holds one image: opening it for
// another image is refused (dirty.ErrOtherImage).
package state

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vmscope/vmscope/dirty"
)

const schema = "vmscope-state-1"

var (
	bucket     = []byte("vmscope")
	keySchema  = []byte("schema")
	keyMeta    = []byte("meta")
	keyHashes  = []byte("hashes")
	prefixIdx  = "index/"
	maxEntries = 1 << 26
)

// DB is an open state file.
type DB struct{ db *bolt.DB }

// Open opens or creates the state file at path.
func Open(path string) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("state %s: %w (another vmscope holding it?)", path, err)
	}
	return &DB{db}, nil
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

// Load returns the snapshot of the image called identity, nil when the
// state is empty, or an error wrapping dirty.ErrOtherImage.
func (d *DB) Load(identity string) (*dirty.Snapshot, error) {
	var s *dirty.Snapshot
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		if v := string(b.Get(keySchema)); v != schema {
			return fmt.Errorf("state: schema %q, this vmscope reads %q: remove the file to start again", v, schema)
		}
		s = &dirty.Snapshot{}
		if err := json.Unmarshal(b.Get(keyMeta), s); err != nil {
			return fmt.Errorf("state: meta: %w", err)
		}
		if s.Identity != identity {
			return fmt.Errorf("%w: it was made for [%s], this image is [%s]; use one state file per image", dirty.ErrOtherImage, s.Identity, identity)
		}
		if h := b.Get(keyHashes); len(h) > 0 {
			if len(h)%8 != 0 || len(h)/8 > maxEntries {
				return fmt.Errorf("state: hash index of %d bytes", len(h))
			}
			s.Hashes = make([]uint64, len(h)/8)
			for i := range s.Hashes {
				s.Hashes[i] = binary.LittleEndian.Uint64(h[i*8:])
			}
		}
		s.Indexes = map[string]*dirty.Index{}
		return b.ForEach(func(k, v []byte) error {
			if !strings.HasPrefix(string(k), prefixIdx) {
				return nil
			}
			x := &dirty.Index{}
			if err := gob.NewDecoder(bytes.NewReader(v)).Decode(x); err != nil {
				return fmt.Errorf("state: %s: %w", k, err)
			}
			s.Indexes[strings.TrimPrefix(string(k), prefixIdx)] = x
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Save replaces the state with s in one transaction.
func (d *DB) Save(s *dirty.Snapshot) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucket) != nil {
			if err := tx.DeleteBucket(bucket); err != nil {
				return err
			}
		}
		b, err := tx.CreateBucket(bucket)
		if err != nil {
			return err
		}
		meta, err := json.Marshal(s)
		if err != nil {
			return err
		}
		h := make([]byte, 8*len(s.Hashes))
		for i, x := range s.Hashes {
			binary.LittleEndian.PutUint64(h[i*8:], x)
		}
		for k, v := range map[string][]byte{string(keySchema): []byte(schema), string(keyMeta): meta, string(keyHashes): h} {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		for id, x := range s.Indexes {
			var v bytes.Buffer
			if err := gob.NewEncoder(&v).Encode(x); err != nil {
				return err
			}
			if err := b.Put([]byte(prefixIdx+id), v.Bytes()); err != nil {
				return err
			}
		}
		return nil
	})
}

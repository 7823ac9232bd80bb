import { useState } from "preact/hooks";
import { ErrorNote } from "./bits.jsx";

// Edits one version's aliases (PATCH replaces the set, DESIGN §4), and moves an alias that
// another version holds: aliases are unique per architecture, so the other version gives it
// up first; if taking it then fails, the other version gets it back.
export function AliasEditor({ api, version, siblings, onDone }) {
  const [text, setText] = useState(version.response.version_aliases.join(", "));
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const held = siblings.flatMap((v) => v.response.version_aliases.map((alias) => ({ alias, owner: v })));

  async function run(action) {
    setBusy(true);
    setError(null);
    try {
      await action();
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  const save = (event) => {
    event.preventDefault();
    const aliases = text.split(/[\s,]+/).filter(Boolean);
    run(() => api.patch(`/${version.name}`, { version_aliases: aliases }));
  };

  const moveHere = (alias, owner) =>
    run(async () => {
      const ownerAliases = owner.response.version_aliases;
      await api.patch(`/${owner.name}`, { version_aliases: ownerAliases.filter((a) => a !== alias) });
      try {
        await api.patch(`/${version.name}`, { version_aliases: [...version.response.version_aliases, alias] });
      } catch (err) {
        await api.patch(`/${owner.name}`, { version_aliases: ownerAliases }).catch(() => null);
        throw err;
      }
    });

  return (
    <form class="alias-editor" onSubmit={save} data-testid="alias-editor">
      <label class="inline">
        aliases
        <input name="aliases" value={text} placeholder="production, v1-stable" onInput={(e) => setText(e.currentTarget.value)} />
      </label>
      <button type="submit" class="primary" disabled={busy}>Save</button>
      <button type="button" onClick={onDone} disabled={busy}>Close</button>
      {held.length ? (
        <label class="inline">
          move here
          <select
            value=""
            disabled={busy}
            onChange={(e) => {
              const pick = held[Number(e.currentTarget.value)];
              if (pick) moveHere(pick.alias, pick.owner);
            }}
          >
            <option value="">choose an alias…</option>
            {held.map((h, i) => (
              <option key={`${h.alias}`} value={i}>
                {h.alias} (now on v{h.owner.name.split("/").pop()})
              </option>
            ))}
          </select>
        </label>
      ) : null}
      <ErrorNote error={error} label="Aliases not changed" />
    </form>
  );
}

// Categories: who-can-see-whom as a matrix (the rule the bubble-servers enforce: members see each other when they
// share a category or when one's category lists the other's under "sees"; it works both ways), and for admins
// create, edit and delete.
import { type FormEvent, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { type Category, api, describe, must, ok } from '../api/client';
import { Done, ErrorNote, useConfirm, useLoad } from '../ui';

/** Whether members of `a` see members of `b` (symmetric). */
export function sees(a: Category, b: Category): boolean {
  return a.id === b.id || a.sees.includes(b.id) || b.sees.includes(a.id);
}

export function CategoriesTab({ who, bubble }: { who: Who; bubble: string }) {
  const { t } = useTranslation();
  const [editing, setEditing] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [confirm, dialog] = useConfirm();
  const categories = useLoad(
    async () => must(await api.GET('/api/v1/bubbles/{bubble}/categories', { params: { path: { bubble } } })),
    [bubble],
  );
  const list = categories.data ?? [];

  const remove = async (c: Category) => {
    if (!(await confirm(t('categories.deleteConfirm', { name: c.display_name }), t('action.delete')))) return;
    setError(null);
    try {
      ok(await api.DELETE('/api/v1/bubbles/{bubble}/categories/{category}', { params: { path: { bubble, category: c.id } } }));
      setDone(t('categories.deleted', { name: c.display_name }));
      categories.reload();
    } catch (err) {
      setError(describe(err));
    }
  };

  return (
    <section aria-labelledby="categories-title">
      <h2 id="categories-title" className="sr-only">
        {t('bubble.tab.categories')}
      </h2>
      {dialog}
      <ErrorNote error={categories.error} onRetry={categories.reload} />
      <ErrorNote error={error} />
      <Done text={done} />
      {categories.data && list.length === 0 && <p className="empty">{t('categories.empty')}</p>}
      {list.length > 0 && (
        <>
          <h3>{t('categories.matrix')}</h3>
          <p className="muted small">{t('categories.matrixHint')}</p>
          <div className="table-wrap">
            <table className="matrix" data-testid="matrix">
              <thead>
                <tr>
                  <th scope="col">
                    <span className="sr-only">{t('categories.rowsSee')}</span>
                  </th>
                  {list.map((c) => (
                    <th key={c.id} scope="col">
                      {c.display_name}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {list.map((row) => (
                  <tr key={row.id}>
                    <th scope="row">{row.display_name}</th>
                    {list.map((col) => {
                      const yes = sees(row, col);
                      return (
                        <td key={col.id} className={yes ? 'yes' : 'no'} data-sees={yes ? 'yes' : 'no'}>
                          <span aria-hidden="true">{yes ? '●' : '·'}</span>
                          <span className="sr-only">
                            {yes ? t('categories.cellYes', { a: row.display_name, b: col.display_name }) : t('categories.cellNo', { a: row.display_name, b: col.display_name })}
                          </span>
                        </td>
                      );
                    })}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <h3>{t('categories.list')}</h3>
          <ul className="plain">
            {list.map((c) =>
              editing === c.id ? (
                <li key={c.id} className="card">
                  <CategoryForm
                    bubble={bubble}
                    all={list}
                    initial={c}
                    onDone={(text) => {
                      setEditing(null);
                      setDone(text);
                      categories.reload();
                    }}
                    onCancel={() => setEditing(null)}
                  />
                </li>
              ) : (
                <li key={c.id} className="row item">
                  <div>
                    <strong>{c.display_name}</strong> <span className="mono muted small">{c.id}</span>
                    <div className="small muted">
                      {c.sees.length ? t('categories.seesList', { list: c.sees.map((id) => list.find((x) => x.id === id)?.display_name ?? id).join(', ') }) : t('categories.seesOwn')}
                    </div>
                  </div>
                  {who.canChange && (
                    <div className="actions">
                      <button type="button" onClick={() => setEditing(c.id)}>
                        {t('action.edit')}
                      </button>
                      <button type="button" className="danger" onClick={() => void remove(c)}>
                        {t('action.delete')}
                      </button>
                    </div>
                  )}
                </li>
              ),
            )}
          </ul>
        </>
      )}
      {who.canChange && categories.data && (
        <div className="card">
          <h3>{t('categories.create')}</h3>
          <CategoryForm
            bubble={bubble}
            all={list}
            onDone={(text) => {
              setDone(text);
              categories.reload();
            }}
          />
        </div>
      )}
    </section>
  );
}

function slug(text: string): string {
  return text
    .toLowerCase()
    .normalize('NFD')
    .replace(/[\u0300-\u036f]/g, '')
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 64);
}

function CategoryForm({
  bubble,
  all,
  initial,
  onDone,
  onCancel,
}: {
  bubble: string;
  all: Category[];
  initial?: Category;
  onDone: (text: string) => void;
  onCancel?: () => void;
}) {
  const { t } = useTranslation();
  const [name, setName] = useState(initial?.display_name ?? '');
  const [seen, setSeen] = useState<string[]>(initial?.sees ?? []);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const others = all.filter((c) => c.id !== initial?.id);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (initial) {
        ok(
          await api.PUT('/api/v1/bubbles/{bubble}/categories/{category}', {
            params: { path: { bubble, category: initial.id } },
            body: { display_name: name, sees: seen },
          }),
        );
        onDone(t('categories.changed', { name }));
      } else {
        ok(await api.POST('/api/v1/bubbles/{bubble}/categories', { params: { path: { bubble } }, body: { id: slug(name), display_name: name, sees: seen } }));
        setName('');
        setSeen([]);
        onDone(t('categories.created', { name }));
      }
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };
  const prefix = initial ? `edit-${initial.id}` : 'new-category';
  return (
    <form onSubmit={(e) => void submit(e)}>
      <label htmlFor={`${prefix}-name`}>{t('categories.name')}</label>
      <input id={`${prefix}-name`} value={name} maxLength={64} onChange={(e) => setName(e.target.value)} required />
      {!initial && name && <p className="hint mono">{slug(name) || '—'}</p>}
      {others.length > 0 && (
        <fieldset>
          <legend>{t('categories.seesLegend')}</legend>
          {others.map((c) => (
            <label key={c.id} className="check">
              <input
                type="checkbox"
                checked={seen.includes(c.id)}
                onChange={(e) => setSeen(e.target.checked ? [...seen, c.id] : seen.filter((x) => x !== c.id))}
              />
              {c.display_name}
            </label>
          ))}
        </fieldset>
      )}
      <ErrorNote error={error} />
      <div className="row">
        <button type="submit" className="primary" disabled={busy || !slug(name)}>
          {initial ? t('action.save') : t('categories.createButton')}
        </button>
        {onCancel && (
          <button type="button" onClick={onCancel}>
            {t('action.cancel')}
          </button>
        )}
      </div>
    </form>
  );
}

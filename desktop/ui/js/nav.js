// Pages and their views. A view is { load(), refresh?(), close?() }: `load` when it is
// shown, `refresh` when something it shows changed (default: load), `close` when another
// page replaces it (where a view stops its streams).
import { S, $, $$ } from './core.js';

/** The sidebar's pages, in Alt+N order. */
export const PAGES = ['machines', 'containers', 'images', 'volumes', 'networks', 'settings'];
const views = {};
export function registerView(page, view) { views[page] = view; }

export function showPage(page, arg) {
  const previous = S.page;
  if (previous !== page && views[previous]?.close) views[previous].close();
  S.page = page;
  for (const p of Object.keys(views)) {
    $(`#page-${p}`).hidden = p !== page;
  }
  // A detail view belongs to its list's page in the sidebar.
  const nav = views[page]?.nav || page;
  for (const p of PAGES) {
    const b = $(`#nav-${p}`);
    if (p === nav) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
  }
  views[page].load(arg);
}

export function refreshPage() {
  const v = views[S.page];
  if (!v) return;
  (v.refresh || v.load)();
}

/** Whether the page shown lists engine objects of the machine S.engineMachine. */
export function showsEngine() { return !!views[S.page]?.engine; }

for (const b of $$('.sidebar button[data-page]')) b.addEventListener('click', () => showPage(b.dataset.page));
document.addEventListener('keydown', (e) => {
  if (e.altKey && !e.ctrlKey && !e.metaKey && e.key >= '1' && e.key <= '6') {
    e.preventDefault();
    showPage(PAGES[Number(e.key) - 1]);
    $(`#nav-${S.page}`).focus();
  }
});

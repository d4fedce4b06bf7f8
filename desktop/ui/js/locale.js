// WebKitGTK takes the page's language from LANG; under LANG=C (a service, a CI runner)
// navigator.language is "C", which Intl refuses ("invalid language tag"), and uPlot
// formats numbers with it when it loads. Imported before uPlot: it puts a language Intl
// accepts in its place.
function valid(tag) {
  try { return Intl.getCanonicalLocales(tag).length > 0; } catch (_) { return false; }
}
if (!valid(navigator.language)) {
  const fallback = (navigator.languages || []).find(valid) || 'en-US';
  Object.defineProperty(navigator, 'language', { get: () => fallback, configurable: true });
}

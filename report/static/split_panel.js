/* The comparison's split panel in report.html: a click on a row of the comparison table shows that image
 * beside the table, with its class scores under model A and model B as paired bars.
 *
 * The bars are a Vega-Lite chart (report/charts.py paired_scores) that charts.js draws like the others, with an
 * empty named data source; a selection (report.js's "rowselect" event) replaces that source's rows through the
 * Vega view, so only this chart redraws. Which row columns hold each class's two scores comes with the spec
 * (usermeta.selected.columns), by class position.
 *
 * For tests: Report.splitPanel.shown, a promise of the last selection's drawing; the panel's data-id is the
 * selected row's id once its bars are drawn.
 */
(function () {
  "use strict";

  var NAME = "selected_image_scores";  // report/charts.py SELECTED_SCORES: the chart's name and its data source
  var report = window.Report || {};
  var box = document.querySelector("[data-chart=\"" + NAME + "\"]");
  var holder = document.getElementById("report-charts");
  if (!box || !holder || !report.charts || !report.tables) return;
  var meta = (JSON.parse(holder.textContent)[NAME].usermeta || {}).selected;
  var table = meta && report.tables[meta.table];
  var panel = box.closest("aside");
  if (!table || !panel) return;
  var latest = 0;
  var state = report.splitPanel = { shown: Promise.resolve(null) };

  /* The bars of one row: per class, A's score then B's; a score the row lacks (a class only one model has) is
   * no bar. */
  function bars(row) {
    var values = [];
    meta.columns.forEach(function (entry) {
      [entry[1], entry[2]].forEach(function (column, side) {
        var score = row[column];
        if (typeof score === "number" && isFinite(score)) {
          values.push({ "class": entry[0], model: meta.series[side], score: score });
        }
      });
    });
    return values;
  }

  function describe(row) {
    var image = panel.querySelector(".split-image");
    image.textContent = "";
    var uri = row.id != null ? (report.thumbnails || {})[row.id] : null;
    if (uri) {
      var img = document.createElement("img");
      img.src = uri;
      img.alt = row.path != null ? String(row.path) : "";
      img.className = "thumbnail";
      image.appendChild(img);
    }
    var facts = panel.querySelector(".split-facts");
    facts.textContent = "";
    [["id", row.id], ["path", row.path], ["truth", row.truth], ["guess A", row.guess_a], ["guess B", row.guess_b]]
      .forEach(function (fact) {
        if (fact[1] === undefined) return;
        facts.appendChild(text("dt", fact[0]));
        facts.appendChild(text("dd", fact[1] === null ? "(none)" : String(fact[1])));
      });
    var hint = panel.querySelector(".split-hint");
    if (hint) hint.hidden = true;
  }

  function show(row) {
    var ticket = ++latest;
    describe(row);
    panel.removeAttribute("data-id");
    state.shown = report.charts.ready.then(function (views) {
      if (ticket !== latest) return null;  // a later click is being drawn
      return views[NAME].data(NAME, bars(row)).runAsync().then(function () {
        if (ticket === latest) panel.setAttribute("data-id", row.id == null ? "" : String(row.id));
        return row;
      });
    });
    state.shown.catch(function (error) {
      panel.querySelector(".split-hint").hidden = false;
      panel.querySelector(".split-hint").textContent = "The scores could not be drawn: " +
        (error && error.message ? error.message : error);
    });
  }

  function text(tag, content) {
    var node = document.createElement(tag);
    node.textContent = content;
    return node;
  }

  table.table.addEventListener("rowselect", function (event) { show(event.detail.row); });
})();

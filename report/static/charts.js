/* The live charts of report.html: Vega-Lite specs (report/charts.py) drawn by the inlined vega-embed.
 *
 * The page's Content-Security-Policy forbids eval, so vega-embed runs with `ast: true`: Vega then evaluates
 * its expressions with its interpreter instead of compiling them with new Function. What the specs do not
 * do themselves is wired here: a click on a confusion-matrix cell filters the prediction table to that
 * (truth, guess) pair, the most confident first (report.js's DataTable.filterSorted), and hovering a point of
 * the score scatter shows that image's thumbnail and scores in the panel beside it.
 *
 * For tests and the benchmark: Report.charts.ready (a promise of every view) and Report.charts.views[name].
 */
(function () {
  "use strict";

  var holder = document.getElementById("report-charts");
  var report = window.Report || (window.Report = {});
  if (!holder || typeof window.vegaEmbed !== "function") {
    report.charts = { views: {}, ready: Promise.resolve({}) };
    return;
  }
  var specs = JSON.parse(holder.textContent);
  var views = {};

  function embed(box) {
    var name = box.getAttribute("data-chart");
    var spec = specs[name];
    var meta = spec.usermeta || {};
    var options = { actions: false, ast: true, renderer: meta.renderer || "svg",
                    tooltip: { theme: "light" } };
    return window.vegaEmbed(box, spec, options).then(function (result) {
      views[name] = result.view;
      if (meta.filter) filterOnClick(result.view, meta.filter);
      if (meta.thumbnails) showHoveredImage(result.view, name, meta.labels || {});
      return result.view;
    }, function (error) {
      box.textContent = "This chart could not be drawn: " + (error && error.message ? error.message : error);
      box.className += " chart-error";
      throw error;
    });
  }

  // A spec with thousands of marks (curves, scatter) asks for a canvas (report/charts.py's usermeta.renderer): as SVG
  // elements they cost about a second each at 10,000 rows. The rest are SVG, crisp and inspectable.

  /* A cell's (truth, guess) becomes the table's filter, sorted by the guessed class's score, highest first:
   * the images most confidently put in that cell ("top confused images for a pair"). */
  function filterOnClick(view, tableName) {
    view.addEventListener("click", function (event, item) {
      var datum = item && item.datum;
      var table = report.tables && report.tables[tableName];
      if (!datum || datum.truth === undefined || datum.guess === undefined || !table) return;
      var text = "x[\"truth\"] = " + quote(String(datum.truth)) + " and x[\"guess\"] = " + quote(String(datum.guess));
      var score = "score_" + datum.guess;
      table.filterSorted(text, table.columns.indexOf(score) >= 0 ? score : "confidence", true);
      var section = document.getElementById(tableName + "-section");
      if (section && section.scrollIntoView) section.scrollIntoView({ block: "start" });
    });
  }

  function showHoveredImage(view, name, labels) {
    var side = document.querySelector("[data-chart-side=\"" + cssEscape(name) + "\"]");
    if (!side) return;
    // The chart holds ids as the table shows them (12 characters); a prefix two images share shows no image.
    var byPrefix = new Map();
    Object.keys(report.thumbnails || {}).forEach(function (key) {
      var prefix = key.slice(0, 12);
      byPrefix.set(prefix, byPrefix.has(prefix) ? null : report.thumbnails[key]);
    });
    view.addEventListener("pointermove", function (event, item) {
      var datum = item && item.datum;
      if (!datum || datum.id === undefined) return;
      side.hidden = false;
      side.textContent = "";
      side.setAttribute("data-id", datum.id === null ? "" : String(datum.id));
      var uri = datum.id !== null ? byPrefix.get(String(datum.id)) : null;
      if (uri) {
        var image = document.createElement("img");
        image.src = uri;
        image.alt = "";
        image.className = "thumbnail";
        side.appendChild(image);
      }
      var list = document.createElement("dl");
      Object.keys(datum).forEach(function (key) {
        if (key === "layer" || key.charAt(0) === "_" || key === "Symbol(vega_id)") return;
        var value = datum[key];
        list.appendChild(element("dt", labels[key] || key));
        list.appendChild(element("dd", value === null ? "(none)" : typeof value === "number" ? value.toFixed(4)
          : String(value)));
      });
      side.appendChild(list);
    });
  }

  function element(tag, text) {
    var node = document.createElement(tag);
    node.textContent = text;
    return node;
  }

  function quote(text) {  // as report.js's quote: a string literal of the filter language (tables/query.js)
    return "\"" + text.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")
      .replace(/\t/g, "\\t").replace(/\r/g, "\\r") + "\"";
  }

  function cssEscape(text) {
    return window.CSS && CSS.escape ? CSS.escape(text) : text.replace(/["\\]/g, "\\$&");
  }

  var boxes = Array.prototype.slice.call(document.querySelectorAll("div.chart[data-chart]"));
  // One chart at a time, each after a turn of the event loop: the page paints and its table answers first, and no
  // single task blocks input for longer than one chart takes to draw.
  var ready = boxes.reduce(function (previous, box) {
    return previous.then(function () {
      return new Promise(function (resolve) { setTimeout(resolve, 0); });
    }).then(function () { return embed(box); });
  }, Promise.resolve()).then(function () { return views; });
  ready.catch(function (error) { console.error("report charts:", error); });
  report.charts = { views: views, ready: ready };
})();

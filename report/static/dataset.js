/* The dataset page (report/dataset.py): a split x class chart and thumbnails grouped by label or split,
 * both narrowed by one filter in the language of `pipeline.py table --filter` (tables/query.js).
 *
 * The rows are embedded once as JSON (#dataset-data). While the filter is empty the chart draws the exact
 * counts computed in Python over every image (`chart`); with a filter it counts the matching embedded rows,
 * and says so when the page holds only some of the images. The gallery shows at most PER_GROUP thumbnails
 * per group, so a redraw costs the same at 10,000 rows as at 100, bar the filter pass.
 */
(function () {
  "use strict";

  var PER_GROUP = 24;  // thumbnails drawn per group; the group's heading says how many match

  var data = JSON.parse(document.getElementById("dataset-data").textContent);
  var thumbnails = data.thumbnails || {};
  var rows = data.rows.map(function (values) {
    var row = {};
    for (var index = 0; index < data.columns.length; index++) row[data.columns[index]] = values[index];
    return row;
  });
  var capped = data.total > rows.length;
  var filterInput = document.getElementById("filter");
  var gallerySelect = document.getElementById("gallery-by");
  var matching = rows;

  function splitOf(row) {
    return row.split === null || row.split === undefined ? data.no_split : row.split;
  }

  /* Filter with the expression in the box (or `text`); false on an error, which the page shows. */
  function applyFilter(text) {
    if (typeof text === "string") filterInput.value = text;
    var expression = filterInput.value;
    try {
      if (expression.trim() === "") {
        matching = rows;
      } else {
        var keep = window.Query.compile(expression);
        matching = rows.filter(function (row) { return keep(row); });
      }
    } catch (error) {
      showError(expression, error);
      return false;
    }
    showError(expression, null);
    render();
    return true;
  }

  function showError(expression, error) {
    var box = document.getElementById("filter-error");
    filterInput.classList.toggle("invalid", Boolean(error));
    box.textContent = "";
    box.removeAttribute("data-column");
    box.hidden = !error;
    if (!error) return;
    var column = typeof error.column === "number" ? error.column : null;
    var message = (column !== null && error.reason) || error.message || String(error);
    box.appendChild(element("div", column === null ? message : "column " + column + ": " + message, "message"));
    if (column !== null) {
      box.setAttribute("data-column", String(column));
      box.appendChild(element("pre", expression + "\n" + " ".repeat(Math.max(0, column - 1)) + "^"));
    }
  }

  function render() {
    var filtered = filterInput.value.trim() !== "";
    var count = document.getElementById("match-count");
    count.setAttribute("data-count", String(filtered ? matching.length : data.total));
    count.textContent = filtered
      ? matching.length.toLocaleString("en") + " of " + rows.length.toLocaleString("en") +
        (capped ? " embedded" : "") + " images match"
      : data.total.toLocaleString("en") + " images";
    renderChart(filtered);
    renderGallery();
  }

  /* Counts per (label, split): exact ones from Python while unfiltered, else the matching rows'. */
  function chartCounts(filtered) {
    if (!filtered) return data.chart;
    var labels = [], splits = [], cells = new Map();
    data.chart.labels.forEach(function (label) { labels.push(label); });
    data.chart.splits.forEach(function (split) { splits.push(split); });
    matching.forEach(function (row) {
      var label = String(row.label), split = splitOf(row);
      if (labels.indexOf(label) < 0) labels.push(label);
      if (splits.indexOf(split) < 0) splits.push(split);
      var key = label + "\u001f" + split;
      cells.set(key, (cells.get(key) || 0) + 1);
    });
    return {
      labels: labels, splits: splits,
      counts: labels.map(function (label) {
        return splits.map(function (split) { return cells.get(label + "\u001f" + split) || 0; });
      })
    };
  }

  function renderChart(filtered) {
    var chart = chartCounts(filtered);
    var scope = document.getElementById("chart-scope");
    scope.setAttribute("data-scope", filtered ? (capped ? "embedded" : "matching") : "exact");
    scope.textContent = !filtered ? "Counts over all " + data.total.toLocaleString("en") + " images."
      : capped ? "Counts over the " + matching.length.toLocaleString("en") + " matching images of the " +
        rows.length.toLocaleString("en") + " embedded, not over all " + data.total.toLocaleString("en") + "."
      : "Counts over the " + matching.length.toLocaleString("en") + " matching images.";
    var largest = 1;
    chart.counts.forEach(function (line) { line.forEach(function (n) { largest = Math.max(largest, n); }); });
    var table = document.getElementById("chart");
    table.tHead.textContent = "";
    table.tBodies[0].textContent = "";
    var head = document.createElement("tr");
    head.appendChild(element("th", "class"));
    chart.splits.forEach(function (split) {
      var th = element("th", split);
      th.setAttribute("data-split", split);
      head.appendChild(th);
    });
    head.appendChild(element("th", "total"));
    table.tHead.appendChild(head);
    var totals = chart.splits.map(function () { return 0; });
    chart.labels.forEach(function (label, i) {
      var line = chart.counts[i];
      var sum = line.reduce(function (a, b) { return a + b; }, 0);
      if (filtered && sum === 0) return;  // a class the filter leaves no image of
      var tr = document.createElement("tr");
      tr.setAttribute("data-label", label);
      tr.appendChild(element("th", label));
      line.forEach(function (n, j) {
        totals[j] += n;
        tr.appendChild(barCell(n, largest, label, chart.splits[j]));
      });
      tr.appendChild(numberCell(sum, "total"));
      table.tBodies[0].appendChild(tr);
    });
    var foot = document.createElement("tr");
    foot.className = "totals";
    foot.appendChild(element("th", "total"));
    totals.forEach(function (n, j) {
      var td = numberCell(n, "split-total");
      td.setAttribute("data-split", chart.splits[j]);
      foot.appendChild(td);
    });
    foot.appendChild(numberCell(totals.reduce(function (a, b) { return a + b; }, 0), "total"));
    table.tBodies[0].appendChild(foot);
  }

  function barCell(n, largest, label, split) {
    var td = document.createElement("td");
    td.className = "bar-cell";
    td.setAttribute("data-split", split);
    td.setAttribute("data-count", String(n));
    td.title = label + " in " + split + ": " + n + " (click to filter)";
    var bar = element("span", "", "chart-bar");
    bar.style.width = (100 * n / largest) + "%";
    td.appendChild(bar);
    td.appendChild(element("span", n.toLocaleString("en"), "chart-number"));
    td.addEventListener("click", function () {
      narrowTo("label", label);
      if (split !== data.no_split) narrowTo("split", split);
    });
    return td;
  }

  function numberCell(n, className) {
    var td = element("td", n.toLocaleString("en"), "number " + className);
    td.setAttribute("data-count", String(n));
    return td;
  }

  /* Thumbnails of the matching rows, grouped by label or split, groups in the chart's order. */
  function renderGallery() {
    var by = gallerySelect.value;
    var gallery = document.getElementById("gallery");
    gallery.textContent = "";
    var groups = new Map();
    var order = by === "split" ? data.chart.splits : data.chart.labels;
    order.forEach(function (key) { groups.set(key, []); });
    matching.forEach(function (row) {
      var key = by === "split" ? splitOf(row) : String(row.label);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(row);
    });
    var fragment = document.createDocumentFragment();
    groups.forEach(function (members, key) {
      if (!members.length) return;
      var group = document.createElement("div");
      group.className = "preview-group";
      group.setAttribute("data-group", key);
      group.setAttribute("data-count", String(members.length));
      var shown = Math.min(members.length, PER_GROUP);
      var heading = element("h3", by + " = " + key + ": " + members.length.toLocaleString("en") +
        (capped ? " embedded" : "") + " image" + (members.length === 1 ? "" : "s") +
        (shown < members.length ? " (first " + shown + " shown)" : ""));
      heading.title = "click to filter to this group";
      heading.addEventListener("click", function () {
        if (by === "split" && key === data.no_split) return;
        narrowTo(by, key);
      });
      group.appendChild(heading);
      var strip = element("div", "", "previews");
      members.slice(0, shown).forEach(function (row) { strip.appendChild(preview(row)); });
      group.appendChild(strip);
      fragment.appendChild(group);
    });
    gallery.appendChild(fragment);
  }

  function preview(row) {
    var figure = document.createElement("figure");
    figure.className = "preview";
    figure.setAttribute("data-id", String(row.id));
    figure.title = row.path + "\n" + row.label + (row.split ? " · " + row.split : "") + " · " +
      row.width + "×" + row.height + " " + row.format;
    var uri = thumbnails[row.id];
    if (uri) {
      var image = document.createElement("img");
      image.src = uri;
      image.alt = row.path;
      image.className = "thumbnail";
      figure.appendChild(image);
    } else {
      figure.appendChild(element("div", "no preview", "no-preview"));
    }
    figure.appendChild(element("figcaption", row.path.split("/").pop()));
    return figure;
  }

  /* Add `x[column] = value` to the filter (a click on a chart cell or a group heading). */
  function narrowTo(column, value) {
    var condition = "x[" + quote(column) + "] = " + quote(String(value));
    var current = filterInput.value.trim();
    applyFilter(current === "" ? condition : "(" + current + ") and " + condition);
  }

  function quote(text) {
    return "\"" + text.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")
      .replace(/\t/g, "\\t").replace(/\r/g, "\\r") + "\"";
  }

  function element(tag, text, className) {
    var node = document.createElement(tag);
    node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  document.querySelectorAll("button.column-name").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = "x[" + quote(button.getAttribute("data-column")) + "]";
      var start = filterInput.selectionStart === null ? filterInput.value.length : filterInput.selectionStart;
      var end = filterInput.selectionEnd === null ? start : filterInput.selectionEnd;
      filterInput.value = filterInput.value.slice(0, start) + text + filterInput.value.slice(end);
      filterInput.focus();
      filterInput.setSelectionRange(start + text.length, start + text.length);
    });
  });
  filterInput.addEventListener("input", function () { applyFilter(null); });
  gallerySelect.addEventListener("change", renderGallery);
  render();

  /* For tests: Dataset.applyFilter("..."), Dataset.matching(). */
  window.Dataset = { applyFilter: applyFilter, matching: function () { return matching.slice(); } };
})();

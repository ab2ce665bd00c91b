/* The interactive tables of report.html.
 *
 * The page embeds each table once as JSON (#report-data). Rows are turned into
 * plain objects, so a filter compiled by Query.compile (tables/query.js,
 * the same language as the CLI's --filter) runs on them directly. Only a page of
 * matching rows is put into the DOM at a time; "Show more" adds the next page,
 * so a redraw costs the same at 10,000 rows as at 100, bar the filter pass itself
 * (a few ms). Thumbnails live in one id -> data: URI map; rows look them up by id.
 *
 * A large table is embedded in part (report/selection.py): the payload's `total` is the
 * table's whole size and each group carries `totals`, its exact counts over every row, computed
 * in Python. Those are shown while the filter is empty; a filter can only search the embedded
 * rows, and the page then says its counts are over those.
 */
(function () {
  "use strict";

  var PAGE_SIZE = 100;  // rows put into the DOM per page; 100 keeps a redraw near 50 ms
  var DIGEST_SHOWN = 12;
  var DISTRIBUTION_SHOWN = 5;

  var data = JSON.parse(document.getElementById("report-data").textContent);
  var thumbnails = data.thumbnails || {};

  function DataTable(section, payload) {
    this.prefix = section.getAttribute("data-prefix") || "";
    this.name = section.getAttribute("data-table");
    this.columns = payload.columns;
    this.display = payload.display;
    this.notes = payload.notes;
    this.rows = payload.rows.map(rowObject(payload.columns));
    this.total = typeof payload.total === "number" ? payload.total : this.rows.length;
    this.capped = this.total > this.rows.length;
    this.groupTotals = {};
    this.scoreColumns = new Set(payload.score_columns);
    this.hasThumbnails = this.columns.indexOf("id") >= 0 && Object.keys(thumbnails).length > 0;
    this.matching = this.rows.slice();
    this.shown = 0;
    this.sortColumn = null;
    this.sortDescending = false;
    this.table = document.getElementById(this.name);
    this.filterInput = this.element("filter");
    this.groupSelect = this.element("group-by");
    this.showMoreButton = this.element("show-more");
    this.groupOptions = {};
    this.groupPaired = {};  // column -> a second spread shown beside the first (a comparison's B beside A)
    this.pairedTotals = {};
    this.selected = null;  // the clicked row (a comparison's split panel shows it: split_panel.js)
    payload.groups.forEach(function (group) {
      this.groupOptions[group.column] = group.other;
      if (group.totals) this.groupTotals[group.column] = group.totals;
      if (group.paired) this.groupPaired[group.column] = group.paired;
      if (group.paired_totals) this.pairedTotals[group.column] = group.paired_totals;
      var option = document.createElement("option");
      option.value = group.column;
      option.textContent = group.column + " (with " + group.other +
        (group.paired ? " and " + group.paired + " side by side" : "") + ")";
      this.groupSelect.appendChild(option);
    }, this);
    this.renderHeader();
    this.renderColumnHelp();
    this.filterInput.addEventListener("input", this.applyFilter.bind(this, null));
    this.groupSelect.addEventListener("change", this.renderGroups.bind(this));
    this.showMoreButton.addEventListener("click", this.renderMore.bind(this));
    this.table.tBodies[0].addEventListener("click", this.select.bind(this));
    this.render();
  }

  /* A click on a row selects it: marked, and announced as a "rowselect" event for what shows it. */
  DataTable.prototype.select = function (event) {
    var tr = event.target && event.target.closest ? event.target.closest("tr") : null;
    if (!tr || !tr.rowData) return;
    var previous = this.table.querySelector("tbody tr.selected");
    if (previous) {
      previous.classList.remove("selected");
      previous.removeAttribute("aria-selected");
    }
    tr.classList.add("selected");
    tr.setAttribute("aria-selected", "true");
    this.selected = tr.rowData;
    this.table.dispatchEvent(new CustomEvent("rowselect", { bubbles: true,
                                                            detail: { table: this.name, row: tr.rowData } }));
  };

  DataTable.prototype.element = function (id) {
    return document.getElementById(this.prefix + id);
  };

  /* Filter the rows with the expression in the box (or `text`); false on an error. */
  DataTable.prototype.applyFilter = function (text) {
    if (typeof text === "string") this.filterInput.value = text;
    var expression = this.filterInput.value;
    var matching;
    try {
      if (expression.trim() === "") {
        matching = this.rows.slice();
      } else {
        var keep = window.Query.compile(expression);
        matching = this.rows.filter(function (row) { return keep(row); });
      }
    } catch (error) {
      this.showError(expression, error);
      return false;
    }
    this.showError(expression, null);
    this.matching = matching;
    this.sortMatching();
    this.render();
    return true;
  };

  DataTable.prototype.showError = function (expression, error) {
    var box = this.element("filter-error");
    this.filterInput.classList.toggle("invalid", Boolean(error));
    if (!error) {
      box.hidden = true;
      box.textContent = "";
      box.removeAttribute("data-column");
      return;
    }
    var column = typeof error.column === "number" ? error.column : null;
    // A QuerySyntaxError carries the bare reason; its message repeats column and expression.
    var message = (column !== null && error.reason) || error.message || String(error);
    box.hidden = false;
    box.textContent = "";
    var line = document.createElement("div");
    line.className = "message";
    line.textContent = column === null ? message : "column " + column + ": " + message;
    box.appendChild(line);
    if (column !== null) {
      box.setAttribute("data-column", String(column));
      var pointer = document.createElement("pre");
      pointer.textContent = expression + "\n" + " ".repeat(Math.max(0, column - 1)) + "^";
      box.appendChild(pointer);
    } else {
      box.removeAttribute("data-column");
    }
  };

  DataTable.prototype.sortBy = function (column) {
    if (this.sortColumn === column) {
      this.sortDescending = !this.sortDescending;
    } else {
      this.sortColumn = column;
      this.sortDescending = false;
    }
    this.table.querySelectorAll("th[data-column]").forEach(function (th) {
      var sorted = th.getAttribute("data-column") === this.sortColumn;
      th.setAttribute("aria-sort", sorted ? (this.sortDescending ? "descending" : "ascending") : "none");
    }, this);
    this.sortMatching();
    this.render();
  };

  DataTable.prototype.sortMatching = function () {
    var column = this.sortColumn;
    if (column === null) return;
    var direction = this.sortDescending ? -1 : 1;
    this.matching.sort(function (a, b) {
      var x = a[column], y = b[column];
      if (x === null || y === null) return (x === null) - (y === null);  // missing last, always
      return x < y ? -direction : x > y ? direction : 0;
    });
  };

  DataTable.prototype.render = function () {
    this.table.tBodies[0].textContent = "";
    this.shown = 0;
    this.renderMore();
    this.renderGroups();
    var count = this.element("row-count");
    var total = this.rows.length;
    var embedded = this.capped ? " embedded" : "";
    count.setAttribute("data-count", String(this.matching.length));
    count.setAttribute("data-total", String(this.total));
    if (this.matching.length !== total) {
      count.textContent = this.matching.length.toLocaleString("en") + " of " + total.toLocaleString("en") +
        embedded + " rows match";
    } else if (this.capped) {
      count.textContent = total.toLocaleString("en") + " of " + this.total.toLocaleString("en") + " rows embedded";
    } else {
      count.textContent = total.toLocaleString("en") + " rows";
    }
  };

  DataTable.prototype.renderMore = function () {
    var end = Math.min(this.matching.length, this.shown + PAGE_SIZE);
    var fragment = document.createDocumentFragment();
    for (var index = this.shown; index < end; index++) {
      fragment.appendChild(this.rowElement(this.matching[index]));
    }
    this.table.tBodies[0].appendChild(fragment);
    this.shown = end;
    var left = this.matching.length - end;
    this.showMoreButton.hidden = left === 0;
    this.showMoreButton.textContent = "Show " + Math.min(left, PAGE_SIZE) + " more (" +
      left.toLocaleString("en") + " not shown)";
  };

  DataTable.prototype.renderHeader = function () {
    var row = document.createElement("tr");
    if (this.hasThumbnails) row.appendChild(cell("th", "image"));
    this.display.forEach(function (column) {
      var th = cell("th", column);
      if (this.notes[column]) th.appendChild(cell("small", this.notes[column], "note"));
      th.setAttribute("data-column", column);
      th.setAttribute("aria-sort", "none");
      th.title = "sort by " + column;
      th.addEventListener("click", this.sortBy.bind(this, column));
      row.appendChild(th);
    }, this);
    this.table.tHead.appendChild(row);
  };

  DataTable.prototype.rowElement = function (row) {
    var tr = document.createElement("tr");
    if (row.truth != null && row.guess != null && row.truth !== row.guess) tr.className = "wrong";
    if (row.correct_a != null && row.correct_b != null && row.correct_a !== row.correct_b) {
      tr.className = row.correct_b ? "fixed" : "broken";  // what model B fixed or broke
    }
    if (row.id != null) tr.setAttribute("data-id", String(row.id));
    tr.rowData = row;
    if (row === this.selected) {
      tr.classList.add("selected");
      tr.setAttribute("aria-selected", "true");
    }
    if (this.hasThumbnails) {
      var td = document.createElement("td");
      var uri = thumbnails[row.id];
      if (uri) {
        var image = document.createElement("img");
        image.src = uri;
        image.alt = "";
        image.className = "thumbnail";
        td.appendChild(image);
      }
      tr.appendChild(td);
    }
    this.display.forEach(function (column) {
      tr.appendChild(this.valueCell(column, row[column]));
    }, this);
    return tr;
  };

  DataTable.prototype.valueCell = function (column, value) {
    if (value === null || value === undefined) return cell("td", "", "missing");
    if (typeof value === "number") {
      var text = Number.isInteger(value) ? String(value) : value.toFixed(4);
      var td = cell("td", text, this.scoreColumns.has(column) ? "number score" : "number");
      td.title = String(value);
      return td;
    }
    if (column === "id" && typeof value === "string" && value.length > DIGEST_SHOWN) {
      var short = cell("td", value.slice(0, DIGEST_SHOWN), "digest");
      short.title = value;
      return short;
    }
    return cell("td", String(value));
  };

  /* Counts per value of the group-by column, with the spread of its paired column. */
  DataTable.prototype.renderGroups = function () {
    var table = this.element("groups");
    var column = this.groupSelect.value;
    var body = table.tBodies[0];
    body.textContent = "";
    table.hidden = column === "";
    if (column === "") {
      this.showScope(this.element("groups-scope"), null, "");
      return;
    }
    var other = this.groupOptions[column];
    var scope = this.element("groups-scope");
    var unfiltered = this.filterInput.value.trim() === "";
    var paired = this.groupPaired[column] || null;
    var groups = new Map();
    if (this.capped && unfiltered && this.groupTotals[column]) {
      var pairedSpread = new Map((this.pairedTotals[column] || []).map(function (entry) {
        return [entry[0], entry[2]];
      }));
      this.groupTotals[column].forEach(function (entry) {
        groups.set(entry[0], { count: entry[1], others: new Map(entry[2]),
                               pairedOthers: paired ? new Map(pairedSpread.get(entry[0]) || []) : null });
      });
      this.showScope(scope, "exact", "Counts over all " + this.total.toLocaleString("en") + " rows.");
    } else if (this.capped) {
      this.showScope(scope, "embedded", "Counts over the " + this.matching.length.toLocaleString("en") +
        " matching rows of the " + this.rows.length.toLocaleString("en") + " embedded, not over all " +
        this.total.toLocaleString("en") + " rows.");
    } else {
      this.showScope(scope, null, "");
    }
    if (!groups.size) this.matching.forEach(function (row) {
      var key = row[column] === null || row[column] === undefined ? null : row[column];
      var group = groups.get(key);
      if (!group) groups.set(key, group = { count: 0, others: new Map(), pairedOthers: paired ? new Map() : null });
      group.count += 1;
      var value = row[other] === undefined ? null : row[other];
      group.others.set(value, (group.others.get(value) || 0) + 1);
      if (paired) {
        var second = row[paired] === undefined ? null : row[paired];
        group.pairedOthers.set(second, (group.pairedOthers.get(second) || 0) + 1);
      }
    });
    table.tHead.rows[0].cells[0].textContent = column;
    table.tHead.rows[0].cells[2].textContent = paired
      ? other + " (" + (this.notes[other] || "A") + ") and " + paired + " (" + (this.notes[paired] || "B") +
        ") within the group, side by side"
      : other + " within the group";
    var ordered = Array.from(groups.entries()).sort(function (a, b) { return b[1].count - a[1].count; });
    var fragment = document.createDocumentFragment();
    ordered.forEach(function (entry) {
      fragment.appendChild(this.groupRow(column, entry[0], entry[1]));
    }, this);
    body.appendChild(fragment);
  };

  DataTable.prototype.showScope = function (scope, kind, text) {
    if (!scope) return;
    scope.hidden = kind === null;
    scope.textContent = text;
    if (kind === null) scope.removeAttribute("data-scope"); else scope.setAttribute("data-scope", kind);
  };

  DataTable.prototype.groupRow = function (column, key, group) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-group", key === null ? "" : String(key));
    tr.title = "click to filter to this group";
    tr.appendChild(cell("th", key === null ? "(missing)" : String(key)));
    tr.appendChild(cell("td", String(group.count), "count"));
    if (group.pairedOthers) {
      tr.appendChild(pairedSpread(key, group));
      tr.addEventListener("click", this.narrowTo.bind(this, column, key));
      return tr;
    }
    var spread = Array.from(group.others.entries()).sort(function (a, b) { return b[1] - a[1]; });
    var td = document.createElement("td");
    var bar = document.createElement("div");
    bar.className = "bar";
    spread.forEach(function (part) {
      var segment = document.createElement("span");
      segment.className = part[0] === key ? "same" : "other";
      segment.style.width = (100 * part[1] / group.count) + "%";
      segment.title = (part[0] === null ? "(missing)" : part[0]) + ": " + part[1];
      bar.appendChild(segment);
    });
    td.appendChild(bar);
    var words = spread.slice(0, DISTRIBUTION_SHOWN).map(function (part) {
      return (part[0] === null ? "(missing)" : part[0]) + " " + part[1];
    });
    if (spread.length > DISTRIBUTION_SHOWN) words.push("+" + (spread.length - DISTRIBUTION_SHOWN) + " more");
    td.appendChild(cell("span", words.join(" · "), "spread"));
    tr.appendChild(td);
    tr.addEventListener("click", this.narrowTo.bind(this, column, key));
    return tr;
  };

  /* W&B's split panel: per value of the paired columns (a guess, say), A's count and B's as two bars on one
   * scale (the group's size), the most frequent first; a value equal to the group's own key is marked "same". */
  function pairedSpread(key, group) {
    var td = document.createElement("td");
    var box = document.createElement("div");
    box.className = "paired";
    var values = Array.from(new Set(Array.from(group.others.keys()).concat(Array.from(group.pairedOthers.keys()))));
    function both(value) { return (group.others.get(value) || 0) + (group.pairedOthers.get(value) || 0); }
    values.sort(function (a, b) { return both(b) - both(a); });
    values.forEach(function (value) {
      var line = document.createElement("div");
      line.className = "paired-row" + (value === key ? " same" : "");
      var counts = [group.others.get(value) || 0, group.pairedOthers.get(value) || 0];
      line.setAttribute("data-value", value === null ? "" : String(value));
      line.setAttribute("data-a", String(counts[0]));
      line.setAttribute("data-b", String(counts[1]));
      line.appendChild(cell("span", value === null ? "(missing)" : String(value), "paired-label"));
      ["a", "b"].forEach(function (side, index) {
        var track = document.createElement("span");
        track.className = "paired-bar side-" + side;
        var fill = document.createElement("span");
        fill.style.width = (100 * counts[index] / Math.max(group.count, 1)) + "%";
        track.appendChild(fill);
        track.title = side.toUpperCase() + ": " + counts[index];
        line.appendChild(track);
        line.appendChild(cell("span", String(counts[index]), "paired-count side-" + side));
      });
      box.appendChild(line);
    });
    td.appendChild(box);
    return td;
  }

  /* Add `x[column] = key` to the filter: a group click drills into that group. */
  DataTable.prototype.narrowTo = function (column, key) {
    var condition = "x[" + quote(column) + "] = " + (key === null ? "null"
      : typeof key === "number" ? String(key) : quote(String(key)));
    var current = this.filterInput.value.trim();
    this.applyFilter(current === "" ? condition : "(" + current + ") and " + condition);
  };

  /* ---- charts (report/static/charts.js): a chart sets the filter and the sort in one redraw. ---- */
  DataTable.prototype.filterSorted = function (text, column, descending) {
    if (this.columns.indexOf(column) >= 0) {
      this.sortColumn = column;
      this.sortDescending = Boolean(descending);
      this.table.querySelectorAll("th[data-column]").forEach(function (th) {
        var sorted = th.getAttribute("data-column") === column;
        th.setAttribute("aria-sort", sorted ? (descending ? "descending" : "ascending") : "none");
      });
    }
    return this.applyFilter(text);
  };
  /* ---- end of charts block ---- */

  DataTable.prototype.renderColumnHelp = function () {
    var holder = this.element("columns");
    this.columns.forEach(function (column) {
      var button = cell("button", column, "column-name");
      button.type = "button";
      button.title = "insert x[\"" + column + "\"] into the filter";
      button.addEventListener("click", this.insertColumn.bind(this, column));
      holder.appendChild(button);
    }, this);
  };

  DataTable.prototype.insertColumn = function (column) {
    var input = this.filterInput;
    var text = "x[" + quote(column) + "]";
    var start = input.selectionStart === null ? input.value.length : input.selectionStart;
    var end = input.selectionEnd === null ? start : input.selectionEnd;
    input.value = input.value.slice(0, start) + text + input.value.slice(end);
    input.focus();
    input.setSelectionRange(start + text.length, start + text.length);
  };

  function rowObject(columns) {
    return function (values) {
      var row = {};
      for (var index = 0; index < columns.length; index++) row[columns[index]] = values[index];
      return row;
    };
  }

  function cell(tag, text, className) {
    var element = document.createElement(tag);
    element.textContent = text;
    if (className) element.className = className;
    return element;
  }

  function quote(text) {
    return "\"" + text.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")
      .replace(/\t/g, "\\t").replace(/\r/g, "\\r") + "\"";
  }

  var tables = {};
  document.querySelectorAll("section.data-table").forEach(function (section) {
    var name = section.getAttribute("data-table");
    tables[name] = new DataTable(section, data.tables[name]);
  });

  /* For tests and the benchmark: Report.tables.predictions.applyFilter("..."). */
  window.Report = { tables: tables, thumbnails: thumbnails };  // thumbnails: charts.js's scatter panel
})();

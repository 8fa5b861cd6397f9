// Budget what-if: move the cursor along the server-drawn curve as the range input changes.
// Everything it needs is in the page (#curve-data and the chart's data-* scale), so no request
// is made; without JavaScript the page still shows the curve and its table.
(function () {
  "use strict";
  var dataEl = document.getElementById("curve-data");
  var chart = document.getElementById("curve-chart");
  var range = document.getElementById("budget-range");
  var file = document.getElementById("sample-file");
  if (file) {
    file.addEventListener("change", function () {
      var f = file.files && file.files[0];
      if (!f) return;
      f.text().then(function (text) { document.getElementById("sample").value = text; });
    });
  }
  if (!dataEl || !chart || !range) return;
  var d = JSON.parse(dataEl.textContent);
  var ns = "http://www.w3.org/2000/svg";
  function num(name) { return parseFloat(chart.getAttribute("data-" + name)); }
  var x0 = num("x0"), x1 = num("x1"), xmin = num("xmin"), xmax = num("xmax");
  var y0 = num("y0"), y1 = num("y1"), ymin = num("ymin"), ymax = num("ymax");
  function px(v) { return x0 + (v - xmin) / ((xmax - xmin) || 1) * (x1 - x0); }
  function py(v) { return y0 + (v - ymin) / ((ymax - ymin) || 1) * (y1 - y0); }
  function el(name, cls) { var e = document.createElementNS(ns, name); e.setAttribute("class", cls); chart.appendChild(e); return e; }
  var area = el("polygon", "bought");
  var cursor = el("line", "cursor");
  var dot = el("circle", "cursor-dot");
  dot.setAttribute("r", "5");
  cursor.setAttribute("y1", String(y1)); cursor.setAttribute("y2", String(y0));
  var money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  function sig(v, n) { return Number(v.toPrecision(n)).toString(); }
  function put(id, value, text) { var e = document.getElementById(id); e.textContent = text; e.setAttribute("data-value", String(value)); }
  function update() {
    var i = parseInt(range.value, 10);
    var b = d.budgets[i], x = px(b);
    cursor.setAttribute("x1", x.toFixed(1)); cursor.setAttribute("x2", x.toFixed(1));
    dot.setAttribute("cx", x.toFixed(1)); dot.setAttribute("cy", py(d.revenue[i]).toFixed(1));
    var pts = [px(d.budgets[0]).toFixed(1) + "," + y0];
    for (var j = 0; j <= i; j++) pts.push(px(d.budgets[j]).toFixed(1) + "," + py(d.revenue[j]).toFixed(1));
    pts.push(x.toFixed(1) + "," + y0);
    area.setAttribute("points", pts.join(" "));
    put("r-budget", b, sig(b, 5));
    put("r-total", b * d.n_customers, money.format(b * d.n_customers));
    put("r-revenue", d.revenue[i], money.format(d.revenue[i]));
    put("r-cost", d.cost[i], money.format(d.cost[i]));
    put("r-marginal", d.marginal[i], sig(d.marginal[i], 4));
    put("r-multiplier", d.multiplier[i], sig(d.multiplier[i], 4));
    range.setAttribute("aria-valuetext", sig(b, 5) + " per customer: expected revenue " + money.format(d.revenue[i]));
  }
  range.addEventListener("input", update);
  update();
})();

"""Shared panel helpers on Grafana's foundation SDK (``grafana-foundation-sdk``).

Each helper returns the SDK's own builder with the IceProd defaults set (the ``$datasource``
variable, units, legend, reduce options), so a dashboard module chains whatever else a panel
needs with the SDK's methods. :func:`dashboard` adds the rows and panels in order, lets the SDK
place them (every line of panels is 24 columns wide), numbers them and checks the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import (
    common,
    dashboard,
    gauge,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from .config import Config

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["iceprod"]
#: every line of panels fills the grid exactly, so the SDK's placement needs no help
GRID_WIDTH = 24

Row = tuple[str, Sequence[Builder[models.Panel]]]


class _Panel(Protocol):
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: models.DataSourceRef) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def with_target(self, target: Builder[Any]) -> Self: ...


P = TypeVar("P", bound=_Panel)


def query(
    expr: str, legend: str = "__auto", *, instant: bool = False, table: bool = False
) -> prometheus.Dataquery:
    """A PromQL query of a panel (range by default; an instant table for table panels)."""
    target = (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .datasource(DATASOURCE)
        .editor_mode(prometheus_models.QueryEditorMode.CODE)
        .format(
            prometheus_models.PromQueryFormat.TABLE
            if table
            else prometheus_models.PromQueryFormat.TIME_SERIES
        )
    )
    return target.instant() if instant else target.range()


def table_query(expr: str) -> prometheus.Dataquery:
    """An instant query whose result is one row per series."""
    return query(expr, instant=True, table=True)


def _panel(
    panel: P,
    title: str,
    description: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    unit: str,
    width: int,
    height: int,
) -> P:
    panel = (
        panel.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(height)
        .unit(unit)
    )
    for index, target in enumerate(queries):
        panel = panel.with_target(target.ref_id(chr(ord("A") + index)))
    return panel


def timeseries_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """Lines over time, a legend below, a tooltip of every series sorted by value."""
    return (
        _panel(
            timeseries.Panel(),
            title,
            description,
            queries,
            unit=unit,
            width=width,
            height=height,
        )
        .draw_style(common_models.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common_models.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(common.StackingConfig().mode(common_models.StackingMode.NONE).group("A"))
        .color_scheme(dashboard.FieldColor().mode(models.FieldColorModeId.PALETTE_CLASSIC))
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )


def _last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    width: int = 4,
    height: int = 5,
) -> stat.Panel:
    """The last value of each series, coloured by thresholds."""
    return (
        _panel(stat.Panel(), title, description, queries, unit=unit, width=width, height=height)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .justify_mode(common_models.BigValueJustifyMode.AUTO)
        .orientation(common_models.VizOrientation.AUTO)
        .text_mode(common_models.BigValueTextMode.AUTO)
        .reduce_options(_last_value())
        .color_scheme(dashboard.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
    )


def gauge_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    width: int = 4,
    height: int = 6,
) -> gauge.Panel:
    """A gauge of the last value."""
    return (
        _panel(gauge.Panel(), title, description, queries, unit=unit, width=width, height=height)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .reduce_options(_last_value())
        .show_threshold_labels(False)
        .show_threshold_markers(True)
        .color_scheme(dashboard.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
    )


def table_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    width: int = 24,
    height: int = 8,
) -> table.Panel:
    """A table of instant results (see :func:`table_query`)."""
    return (
        _panel(table.Panel(), title, description, queries, unit=unit, width=width, height=height)
        .cell_height(common_models.TableCellHeight.SM)
        .show_header(True)
        .footer(common.TableFooterOptions().show(False))
    )


# ---------------------------------------------------------------------------- field settings


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: (None, base colour), then (value, colour) steps."""
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=colour) for value, colour in steps])
    )


def value_mapping(*texts: tuple[str, str, str | None]) -> list[models.ValueMapping]:
    """Texts (and colours) for the values of a 0/1 series: (value, text, colour)."""
    return [
        models.ValueMap(
            options={
                value: models.ValueMappingResult(text=text, color=colour, index=index)
                for index, (value, text, colour) in enumerate(texts)
            }
        )
    ]


def up_mapping(down: str = "down", up: str = "up") -> list[models.ValueMapping]:
    """Value mappings of a 0/1 health series."""
    return value_mapping(("0", down, "red"), ("1", up, "green"))


def fixed_colour(colour: str) -> dashboard.FieldColor:
    """One colour for every series."""
    return dashboard.FieldColor().mode(models.FieldColorModeId.FIXED).fixed_color(colour)


def colour(colour: str) -> list[models.DynamicConfigValue]:
    """Override properties: a fixed colour."""
    return [
        models.DynamicConfigValue(id_val="color", value={"fixedColor": colour, "mode": "fixed"})
    ]


def unit(name: str) -> list[models.DynamicConfigValue]:
    """Override properties: a unit."""
    return [models.DynamicConfigValue(id_val="unit", value=name)]


def right_axis(name: str) -> list[models.DynamicConfigValue]:
    """Override properties: a right-hand axis with its own unit."""
    return [*unit(name), models.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]


def dataset_link(cfg: Config) -> list[models.DynamicConfigValue]:
    """Override properties: a link from a table cell to the dataset dashboard.

    It keeps the datasource, the time range and the owner filter (``$group``, ``$username``).
    """
    uid = cfg.dataset_uid
    link = {
        "title": "Open dataset ${__data.fields.dataset}",
        "url": f"/d/{uid}/{uid}?var-dataset=${{__data.fields.dataset}}"
        "&${datasource:queryparam}&${group:queryparam}&${username:queryparam}"
        "&${__url_time_range}",
    }
    return [models.DynamicConfigValue(id_val="links", value=[link])]


def transformation(kind: str, **options: Any) -> models.DataTransformerConfig:
    """A Grafana transformation (``organize``, ``merge``, ``sortBy``, ``groupingToMatrix``)."""
    return models.DataTransformerConfig(id_val=kind, options=options)


def organize(
    exclude: Sequence[str] = (),
    order: Sequence[str] = (),
    rename: dict[str, str] | None = None,
) -> models.DataTransformerConfig:
    """Hide, order and rename the columns of a table."""
    options: dict[str, Any] = {}
    if exclude:
        options["excludeByName"] = dict.fromkeys(exclude, True)
    if order:
        options["indexByName"] = {name: index for index, name in enumerate(order)}
    if rename:
        options["renameByName"] = rename
    return transformation("organize", **options)


def sort_by(field: str, *, desc: bool = False) -> models.DataTransformerConfig:
    """Sort the rows of a table by one column."""
    return transformation("sortBy", sort=[{"field": field, "desc": desc}])


# ---------------------------------------------------------------------------- variables


def datasource_variable() -> dashboard.DatasourceVariable:
    """The ``$datasource`` variable every query uses."""
    return dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def query_variable(
    name: str, label: str, promql: str, *, multi: bool = False, numeric: bool = False
) -> dashboard.QueryVariable:
    """A variable filled from a ``label_values()`` query; ``multi`` adds "All" (``.*``)."""
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": promql, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(
            models.VariableSort.NUMERICAL_ASC if numeric else models.VariableSort.ALPHABETICAL_ASC
        )
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        variable = variable.all_value(".*").current(
            models.VariableOption(selected=True, text=["All"], value=["$__all"])
        )
    return variable


def owner_variables() -> list[dashboard.QueryVariable]:
    """``$group`` and ``$username``: an IceProd group's or a user's own datasets."""
    return [
        query_variable("group", "Group", "label_values(iceprod_dataset_info, group)", multi=True),
        query_variable(
            "username",
            "User",
            'label_values(iceprod_dataset_info{group=~"$group"}, username)',
            multi=True,
        ),
    ]


#: one series per dataset of the selected owners (``and on (dataset) OWNED`` filters by them)
OWNED = 'max by (dataset) (iceprod_dataset_info{group=~"$group", username=~"$username"})'


# ---------------------------------------------------------------------------- dashboard


def dashboard_model(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Builder[models.VariableModel]],
    rows: Sequence[Row],
) -> models.Dashboard:
    """A whole dashboard: a link to the other IceProd boards, variables, rows of panels."""
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .link(
            dashboard.DashboardLink("IceProd dashboards")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .icon("external link")
            .as_dropdown(False)
            .include_vars(False)
            .keep_time(True)
            .target_blank(False)
        )
        .with_variable(datasource_variable())
    )
    for variable in variables:
        board = board.with_variable(variable)
    for row_title, row_panels in rows:
        board = board.with_row(dashboard.Row(row_title))
        for panel in row_panels:
            board = board.with_panel(panel)
    model = board.build()
    for number, item in enumerate(model.panels or [], start=1):
        item.id_val = number
        grid = item.grid_pos
        assert grid is not None
        if grid.x + grid.w > GRID_WIDTH:
            raise ValueError(f"{uid}: panel {item.title!r} overflows its line of {GRID_WIDTH}")
    return model
